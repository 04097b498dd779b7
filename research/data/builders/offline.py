"""The base of our offline TFDS builders: one plain line instead of TFDS's download banner.

TFDS announces every build with a bold "Downloading and preparing dataset ..." (and a bold
"... downloaded and prepared" after it), which is wrong for data that ships inside an installed
package or is generated, and alarming on machines without network. Public datasets keep TFDS's
own messages: only builders deriving from `OfflineBuilder` print the plain line.
"""

import tensorflow_datasets as tfds

BUNDLED = "bundled"  # the data ships inside an installed package (scikit-learn, statsmodels)
GENERATED = "generated"  # the data is computed by the builder itself


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder that needs no network; subclasses set ORIGIN to BUNDLED or GENERATED."""

    ORIGIN = BUNDLED

    def _log_download_bytes(self) -> None:
        # TFDS calls this once, just before it builds the dataset into self.data_dir.
        print(preparing_line(self.ORIGIN, self._display_name(), self.data_dir), flush=True)

    def _log_download_done(self) -> None:
        """Silent: the line printed before the build says everything the user needs."""

    def _display_name(self) -> str:
        """`adding/t50` for a builder with configs, else the plain name."""
        config = self.builder_config
        return f"{self.name}/{config.name}" if config is not None else self.name


def preparing_line(origin: str, name: str, directory: str) -> str:
    """`preparing the bundled digits dataset (offline, once) in DIR`."""
    return f"preparing the {origin} {name} dataset (offline, once) in {directory}"
