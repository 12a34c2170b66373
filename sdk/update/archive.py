"""The bundle directory as an update archive: :func:`pack_bundle` on the host (a deterministic
tar.gz); on the device :func:`unpack_update` checks the received archive against its begin message
and :func:`safe_extract` extracts it, refusing what could escape the destination or fill the disk."""
from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from ..bundle import MANIFEST_FILE, BundleError, Manifest, load_manifest, sha256_file
from .store import remove_tree
from .wire import ArchiveInfo, UpdateRefused

EXTRACT_FACTOR = 4          # the extracted bundle may be at most this many times max_bytes
MAX_MEMBERS = 1000          # files in an update archive


def pack_bundle(bundle_dir: str | Path) -> bytes:
    """The bundle directory as a deterministic tar.gz: sorted names, mtime 0, no owners, fixed modes."""
    root = Path(bundle_dir)
    if not (root / MANIFEST_FILE).is_file():
        raise BundleError(f"{root}: not a model bundle (no {MANIFEST_FILE})")
    paths = sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for p in paths:
                info = tarfile.TarInfo(p.relative_to(root).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if p.is_symlink():
                    raise BundleError(f"{p}: symbolic links cannot be packed into an update")
                if p.is_dir():
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif p.is_file():
                    info.size, info.mode = p.stat().st_size, 0o644
                    with p.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    raise BundleError(f"{p}: not a regular file or folder")
    return buf.getvalue()


def _checked_members(tar: tarfile.TarFile, max_total: int) -> list[tarfile.TarInfo]:
    """The archive's entries, each checked before the next header is read (tar.getmembers() would
    decompress everything first: millions of entries or a huge member before any limit). Reading to
    the end also makes a truncated archive fail here, before extracting."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for m in tar:
        if len(members) >= MAX_MEMBERS:
            raise UpdateRefused(f"archive holds more than {MAX_MEMBERS} entries")
        parts = PurePosixPath(m.name).parts
        if not parts or m.name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0] or "\\" in m.name:
            raise UpdateRefused(f"unsafe archive entry {m.name!r}: absolute path or '..'")
        if not (m.isfile() or m.isdir()):
            kind = "link" if (m.issym() or m.islnk()) else "device/fifo/special file"
            raise UpdateRefused(f"unsafe archive entry {m.name!r}: a {kind} (only files and folders allowed)")
        total += m.size
        if m.size > max_total or total > max_total:
            raise UpdateRefused(f"archive expands to more than {max_total} bytes "
                                f"({EXTRACT_FACTOR}x update.max_bytes)")
        members.append(m)
    return members


def safe_extract(archive: str | Path, dest: str | Path, max_total: int) -> None:
    """Extract a tar.gz refusing absolute paths, ``..``, links, devices, too many or too large members.

    The members are checked here on every Python; tarfile's ``data`` filter is used as well where
    it exists (3.10.12+, 3.11.4+).
    """
    dest = Path(dest)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _checked_members(tar, max_total)
            dest.mkdir(parents=True, exist_ok=False)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - old Pythons: the checks above are the filter
                tar.extractall(dest, members=members)
    except UpdateRefused:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UpdateRefused(f"archive is not a readable tar.gz ({e})") from e
    except OSError as e:
        raise UpdateRefused(f"extracting the archive failed ({e})") from e


def unpack_update(staged: Path, info: ArchiveInfo, dest: Path, max_total: int) -> Manifest:
    """The received archive ``staged``, checked against the begin message's ``info`` (size, sha256),
    extracted into ``dest`` (cleared first) with :func:`safe_extract`; returns its manifest.
    Raises :class:`UpdateRefused` when any of it fails."""
    size = staged.stat().st_size
    if size != info.size:
        raise UpdateRefused(f"archive has {size} bytes, the begin message says {info.size}")
    digest = sha256_file(staged)
    if digest != info.sha256:
        raise UpdateRefused(f"archive sha256 {digest[:16]}... does not match the begin message's "
                            f"{info.sha256[:16]}... (a corrupt or altered chunk)")
    if not remove_tree(dest, "an earlier extraction"):
        raise UpdateRefused(f"cannot clear the extraction folder {dest.name} (see the device log)")
    safe_extract(staged, dest, max_total)
    try:
        return load_manifest(dest)
    except BundleError as e:
        raise UpdateRefused(f"the archive is not a valid bundle: {str(e).replace(str(dest), '<archive>')}") from e
