"""Storage paths for a study's trial results and checkpoints, and the check that every node reaches them.

The storage path is a local folder (default ``./dssl_results``) or a URI that ``pyarrow.fs``
understands, such as ``s3://bucket/dssl`` or ``gs://bucket/dssl``; Ray Tune and Ray Train write
through ``pyarrow.fs`` either way. On a cluster of several nodes each trial writes its checkpoints
from the node it runs on, so a folder on one node's own disk cannot receive them. A SQLite MLflow
store is one file on one node, so trials on other nodes cannot write their metrics to it.
:func:`check_reachable_from_all_nodes` rejects both before anything starts.

Example:
    >>> storage = resolve_storage("s3://my-bucket/dssl")  # doctest: +SKIP
    >>> storage.uri, storage.is_local  # doctest: +SKIP
    ('s3://my-bucket/dssl', False)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow.fs

logger = logging.getLogger(__name__)

DEFAULT_STORAGE_PATH = "dssl_results"
STORAGE_ENV = "DSSL_STORAGE_PATH"
SHARED_STORAGE_ENV = "DSSL_SHARED_STORAGE"

# File-system types (the third field of /proc/mounts) that every node of a cluster can mount.
NETWORK_FILE_SYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "lustre",
        "gpfs",
        "ceph",
        "cephfs",
        "beegfs",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.gcsfuse",
        "fuse.s3fs",
        "fuse.juicefs",
        "fuse.mountpoint-s3",
        "fuse.blobfuse",
        "fuse.sshfs",
        "wekafs",
    }
)


class StorageError(ValueError):
    """Raised before a study starts when its storage path or tracking store cannot serve its cluster."""


@dataclasses.dataclass(frozen=True)
class StudyStorage:
    """A resolved storage path.

    Attributes:
        uri: What Ray Tune and Ray Train receive: an absolute local path or a URI.
        is_local: Whether ``uri`` is a folder of this machine's file system.
    """

    uri: str
    is_local: bool

    def join(self, *parts: str) -> str:
        """Return ``uri`` with ``parts`` appended as path components."""
        if self.is_local:
            return str(Path(self.uri, *parts))
        # Options such as ?endpoint_override=... stay at the end, after the joined path.
        base, separator, query = self.uri.partition("?")
        return "/".join([base.rstrip("/"), *parts]) + separator + query

    def split(self) -> tuple[str, str]:
        """Return the parent folder (a path or a URI that keeps any ``?`` options) and the last name."""
        if self.is_local:
            path = Path(self.uri)
            return str(path.parent), path.name
        base, separator, query = self.uri.partition("?")
        parent, _, name = base.rstrip("/").rpartition("/")
        return parent + separator + query, name

    def filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """Return the ``pyarrow.fs`` file system and the path inside it."""
        if self.is_local:
            return pyarrow.fs.LocalFileSystem(), self.uri
        return pyarrow.fs.FileSystem.from_uri(self.uri)

    def describe(self) -> str:
        """Return ``uri`` with any user name, password or query removed, for logs and MLflow tags."""
        return redact_uri(self.uri)


def resolve_storage(value: str | os.PathLike | None = None) -> StudyStorage:
    """Return the study storage: ``value``, else ``DSSL_STORAGE_PATH``, else ``./dssl_results``.

    Args:
        value: A local folder, a ``file://`` URI, or a URI of a file system that ``pyarrow.fs``
            supports (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``).

    Raises:
        StorageError: ``value`` is a URI that ``pyarrow.fs`` cannot open; the message names it.
    """
    chosen = str(value or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE_PATH)
    if "://" not in chosen:
        return StudyStorage(str(Path(chosen).expanduser().resolve()), is_local=True)

    scheme = chosen.split("://", 1)[0].lower()
    if scheme == "file":
        return StudyStorage(str(Path(urllib.parse.urlparse(chosen).path).resolve()), is_local=True)
    try:
        pyarrow.fs.FileSystem.from_uri(chosen)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError, ValueError) as error:
        # pyarrow's message repeats the whole URI, with any key or password in it.
        reason = str(error).replace(chosen, redact_uri(chosen))
        raise StorageError(
            f"the storage path {redact_uri(chosen)!r} is not a URI that pyarrow.fs can open ({reason}); "
            "pass --storage-path (or DSSL_STORAGE_PATH) as a local folder or a URI such as "
            "s3://BUCKET/dssl or gs://BUCKET/dssl, with the cloud credentials in the usual "
            "environment variables or instance role"
        ) from None
    return StudyStorage(chosen.rstrip("/"), is_local=False)


def redact_uri(uri: str) -> str:
    """Return ``uri`` without its user name, password and query string (where keys can sit)."""
    if "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    # The URI is joined by hand because urlunsplit drops the empty host of an absolute SQLite URI
    # and turns sqlite:////data/mlflow.db into sqlite://data/mlflow.db, a different database.
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def shared_storage_declared(flag: bool = False) -> bool:
    """Return whether the user stated that local paths lie on storage every node mounts."""
    return flag or os.environ.get(SHARED_STORAGE_ENV, "").strip().lower() in {"1", "true", "yes"}


def file_system_type(path: str | os.PathLike) -> str | None:
    """Return the type of the file system that contains ``path`` (from ``/proc/mounts``), if known."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = Path(path).resolve()
    best, best_type = -1, None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        if (target == Path(mount_point) or Path(mount_point) in target.parents) and len(mount_point) > best:
            best, best_type = len(mount_point), fields[2]
    return best_type


def cluster_nodes() -> tuple[int, bool]:
    """Return the alive nodes of the connected Ray cluster and whether an autoscaler can add nodes.

    Ray's autoscaler publishes its state in the GCS. The v2 autoscaler stores its node groups.
    The v1 autoscaler's status names the node types of its cluster config (``ray.head.default``,
    ``gpu_worker``). A head started without an autoscaling config reports bare node ids
    (``node_<hex>``) instead, and a Ray started by ``ray.init`` reports nothing.
    """
    import ray

    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    return alive, _autoscaler_can_add_nodes()


def _autoscaler_can_add_nodes() -> bool:
    import ray._private.state
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        # NOTE: untested. In Ray 2.60 no Python code writes this cluster config, and only the v1
        # monitor writes __autoscaling_status, so a v2 autoscaler may read as one that cannot grow.
        config = ray._private.state.state.get_cluster_config()
        if config is not None and config.node_group_configs:
            return any(group.max_count != 0 for group in config.node_group_configs if "head" not in group.name)
        raw = _internal_kv_get("__autoscaling_status")
    except Exception:  # no GCS key or an older GCS: judge by the alive nodes alone
        logger.debug("could not read the autoscaler state", exc_info=True)
        return False
    if not raw:
        return False
    report = json.loads(raw).get("autoscaler_report") or {}
    node_types = set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {})
    return any(not name.startswith("node_") for name in node_types)


def check_reachable_from_all_nodes(
    storage: StudyStorage,
    tracking_uri: str,
    *,
    shared_storage: bool = False,
    nodes: tuple[int, bool] | None = None,
) -> None:
    """Reject node-local storage and a SQLite MLflow store on a cluster of several nodes.

    Call it after connecting to Ray. A local folder passes when ``/proc/mounts`` shows a network
    file system under it, or when the user declares shared storage (``--shared-storage`` or
    ``DSSL_SHARED_STORAGE=1``).

    Args:
        storage: The resolved storage path.
        tracking_uri: The resolved MLflow tracking URI.
        shared_storage: The user declared that local paths are on storage every node mounts.
        nodes: ``(alive nodes, autoscaler can add nodes)``; read from the cluster when ``None``.

    Raises:
        StorageError: The cluster has, or can grow, more than one node and a path is node-local.
    """
    alive, can_grow = nodes if nodes is not None else cluster_nodes()
    if alive <= 1 and not can_grow:
        return
    if shared_storage_declared(shared_storage):
        logger.info("shared storage declared: local paths are taken to be mounted on every node")
        return

    cluster = f"this Ray cluster has {alive} node{'s' if alive != 1 else ''}"
    if can_grow:
        cluster += " and its autoscaler can add worker nodes"
    problems = []
    if storage.is_local:
        fs_type = file_system_type(storage.uri)
        if fs_type not in NETWORK_FILE_SYSTEMS:
            problems.append(
                f"the storage path {storage.uri} is on this node's own disk (file system "
                f"{fs_type or 'unknown'}), so trials on other nodes cannot write their checkpoints "
                "there; pass --storage-path s3://BUCKET/dssl (or gs://, or a folder on NFS)"
            )
    # SQLite's file locks are unreliable on network file systems, so a mount does not help here.
    if tracking_uri.startswith("sqlite:"):
        problems.append(
            f"the MLflow store {tracking_uri} is a SQLite file on one node, which trials on "
            "other nodes cannot write; start a tracking server and pass --tracking-uri "
            "http://HOST:5000 (see cluster/README.md)"
        )
    if problems:
        raise StorageError(
            f"{cluster}, but " + "; and ".join(problems) + ". If these paths are on storage that every "
            "node mounts, pass --shared-storage (or set DSSL_SHARED_STORAGE=1)."
        )


def write_json(storage: StudyStorage, relative: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``relative`` under the storage path, through ``pyarrow.fs``."""
    filesystem, root = storage.filesystem()
    path = f"{root.rstrip('/')}/{relative}"
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(json.dumps(payload, indent=2, sort_keys=True).encode())


def read_json(storage: StudyStorage, relative: str) -> dict[str, Any]:
    """Read the JSON that :func:`write_json` wrote; raise ``FileNotFoundError`` when it is missing."""
    filesystem, root = storage.filesystem()
    path = f"{root.rstrip('/')}/{relative}"
    if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(path)
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())
