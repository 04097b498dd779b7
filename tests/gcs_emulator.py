"""A Google Cloud Storage emulator on loopback (gcp-storage-emulator, in memory) for gs:// tests.

`start()` runs it in a child process and returns it with the environment that points every
client at it: gcsfs (etils.epath's gs:// backend), TensorStore (Orbax's arrays) and
google-cloud-storage, with a fixed token instead of credentials. The environment must be set
before a process first touches gs:// (clients cache their endpoint), so the tests use it for the
processes they start. `list_objects` and `read_object` check what a run wrote through the
emulator's JSON API, independently of the code under test.

Run as a script (`gcs_emulator.py PORT BUCKET`) it is the emulator process itself.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator


def _serve(port: int, bucket: str) -> None:
    """The emulator, with two gaps filled: an object's `moveTo` (gcsfs's rename; unanswered,
    gcsfs retries it for half a minute before copying and deleting), and the generation headers
    of a download (without them TensorStore cannot update an OCDBT manifest: Orbax's saves of
    more than a few arrays fail with "Malformed StorageGeneration")."""
    import logging
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    logging.basicConfig(level=logging.CRITICAL)

    def move(request, response, storage, *args, **kwargs):
        params = request.params
        bucket_name, source = params["bucket_name"], params["object_id"]
        try:
            moved = objects._copy(
                request.base_url, storage, bucket_name, source, bucket_name, params["target"]
            )
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            return
        objects._delete(storage, bucket_name, source)
        response.json(moved)

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        # TensorStore reads an object's generation from these headers (OCDBT's manifest is
        # read, then replaced on condition of its generation); the emulator leaves them out.
        with contextlib.suppress(NotFound):
            params = request.params
            obj = storage.get_file_obj(params["bucket_name"], params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]
        download(request, response, storage, *args, **kwargs)

    objects.download = download_with_generation  # `objects.get` with alt=media calls it too
    handlers = [
        (pattern, {m: download_with_generation if f is download else f for m, f in calls.items()})
        for pattern, calls in server.HANDLERS
    ]
    route = (
        r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
        r"/moveTo/o/(?P<target>.*[^/]+)$"
    )
    server.HANDLERS = ((route, {"POST": move}), *handlers)
    server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start(bucket: str = "bucket") -> Iterator[tuple[str, dict[str, str]]]:
    """Runs the emulator with one empty `bucket`; yields (its URL, the clients' environment)."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, str(port), bucket],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process)
        yield url, environment(url)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until_up(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1).read()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the storage emulator did not start at {url}") from None
            time.sleep(0.1)


def environment(url: str) -> dict[str, str]:
    """What points gcsfs, TensorStore and google-cloud-storage at the emulator at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore's gcs driver (Orbax array data)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore: no credential lookup
        # gcsfs's default file system asks each bucket for its layout over gRPC, which the
        # emulator does not serve; the plain one speaks JSON only.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # No credentials, and no listing cache: TensorStore writes objects gcsfs would not see.
        "FSSPEC_GCS": json.dumps({"token": "anon", "use_listings_cache": False}),
    }


def list_objects(url: str, bucket: str, prefix: str) -> list[str]:
    """Names of the objects in `bucket` under `prefix`, sorted."""
    names, token = [], None
    while True:
        query = {"prefix": prefix, **({"pageToken": token} if token else {})}
        address = f"{url}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}"
        page = json.loads(urllib.request.urlopen(address).read())
        names += [item["name"] for item in page.get("items", [])]
        token = page.get("nextPageToken")
        if not token:
            return sorted(names)


def read_object(url: str, bucket: str, name: str) -> bytes:
    """The content of one object."""
    quoted = urllib.parse.quote(name, safe="")
    return urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}/o/{quoted}?alt=media").read()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
