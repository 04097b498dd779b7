"""Make a public TFDS dataset look prepared (metadata only) for `tfds.testing.mock_data`."""

import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming


def fake_prepared(name: str, data_dir: str, splits: dict[str, int], file_format="array_record"):
    """Write the metadata `tfds build` would for `name`, without records (mock_data serves them)."""
    builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
    template = naming.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix=file_format
    )
    infos = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[n],
            num_bytes=0,
            filename_template=template.replace(split=split),
        )
        for split, n in splits.items()
    ]
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
