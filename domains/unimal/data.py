"""Where the UNIMAL robots live, and installing them (``kdistill data fetch unimal``).

A robot set is a folder holding ``train/{xml,metadata}`` and ``test/{xml,metadata}``. It is looked
for, in order, in the ``data_dir`` given (``--data-dir``), in ``$KDISTILL_UNIMAL_DIR``, and in the
user cache ``~/.cache/kdistill/unimal`` (``$XDG_CACHE_HOME`` is honoured).

Installing copies only the files named in ``manifest.json`` (shipped with the project: relative path ->
sha256 of every train/test xml and metadata file) into a hidden staging folder beside the target,
checks every hash, and only then renames the staging folder into place. An interrupted or failed fetch
leaves the target as it was (absent, or the previous complete install).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from kdistill.errors import DataError, MissingDataError

ENV_VAR = "KDISTILL_UNIMAL_DIR"
URL_ENV_VAR = "KDISTILL_UNIMAL_URL"  # another location of the same archive (a mirror, or a file:// URL)
SPLITS = ("train", "test")
REPO = "MasterXiong/Universal-Morphology-Control"
COMMIT = "18c0516c0e133ba960e2f5b56c0817adc8983ec9"
ARCHIVE_URL = f"https://codeload.github.com/{REPO}/tar.gz/{COMMIT}"
MANIFEST_PATH = Path(__file__).with_name("manifest.json")
INSTALL_MARKER = ".kdistill-unimal.json"
FETCH_HINT = f"run `kdistill data fetch unimal` or set {ENV_VAR} to a folder holding train/ and test/ robot sets"

# progress(description, completed, total); total is None when unknown
Progress = Callable[[str, int, "int | None"], None]


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdistill" / "unimal"


def default_location(data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The folder robots are read from (or installed to), and where that choice came from."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), ENV_VAR
    return user_cache_dir(), "the user cache"


def find_robot_set(data_dir: str | os.PathLike | None = None) -> Path:
    """The robot-set folder to read, or a DataError naming the fetch command and the env var."""
    path, origin = default_location(data_dir)
    if not path.is_dir():
        raise MissingDataError(f"no UNIMAL robots at {path} (from {origin}); {FETCH_HINT}.")
    if not any((path / s / "xml").is_dir() for s in SPLITS):
        # an empty folder can be installed into (MissingDataError); one holding other files cannot
        raise (MissingDataError if _is_empty(path) else DataError)(
            f"{path} (from {origin}) holds no UNIMAL robot set (train/xml or test/xml); {FETCH_HINT}.")
    return path


def _is_empty(path: Path) -> bool:
    try:
        return not any(path.iterdir())
    except OSError:
        return False


def list_splits(root: Path) -> dict[str, list[str]]:
    """Robot names per split present under ``root`` (sorted).

    A split folder that exists but cannot be listed is an error, not an absent split; so is a robot name
    in two splits with different files (which of the two a task name means would be a guess).
    """
    out = {}
    for split in SPLITS:
        xml_dir = root / split / "xml"
        if xml_dir.is_dir():
            try:
                names = [e.name for e in os.scandir(xml_dir)]
            except OSError as exc:
                raise DataError(f"cannot list the robots in {xml_dir} ({exc.strerror}); fix its permissions or "
                                f"re-install the robots with `kdistill data fetch unimal`.") from None
            out[split] = sorted(n[:-4] for n in names if n.endswith(".xml") and not n.startswith("."))
    _check_shared_names(root, out)
    return out


def _same_file_contents(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _check_shared_names(root: Path, splits: dict[str, list[str]]) -> None:
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            for name in sorted(set(splits[first]) & set(splits[second])):
                for kind, ext in (("xml", ".xml"), ("metadata", ".json")):
                    a, b = root / first / kind / f"{name}{ext}", root / second / kind / f"{name}{ext}"
                    if (a.exists() or b.exists()) and not _same_file_contents(a, b):
                        raise DataError(f"robot {name!r} is in both {first}/ and {second}/ of {root} with different "
                                        f"{kind} files ({a.name}); rename one of them or remove the duplicate.")


# installing ----------------------------------------------------------------------------------------

def load_manifest() -> dict[str, str]:
    return json.loads(MANIFEST_PATH.read_text())["files"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _relative_robot_path(name: str) -> str | None:
    """``[TOP/][data/]{train,test}/{xml,metadata}/FILE`` -> ``split/kind/FILE`` (else None)."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in (".", "/")]
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-2] not in ("xml", "metadata"):
        return None
    prefix = parts[:-3]
    if len(prefix) <= 1 or (len(prefix) == 2 and prefix[1] == "data"):
        return "/".join(parts[-3:])
    return None


def _download(url: str, dest: Path, progress: Progress | None) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while block := resp.read(1 << 16):
                out.write(block)
                done += len(block)
                if progress:
                    progress("downloading", done, total)
    except OSError as exc:
        raise DataError(f"downloading {url} failed ({exc}); check the connection, or download it elsewhere and "
                        "install it with `kdistill data fetch unimal --from ARCHIVE`.") from None


def _stage_from_folder(src: Path, staging: Path, manifest: dict[str, str], progress: Progress | None) -> None:
    roots = [src, src / "data"]
    root = next((r for r in roots if any((r / s / "xml").is_dir() for s in SPLITS)), None)
    if root is None:
        raise DataError(f"{src} holds no train/ or test/ robot set (nor a data/ folder with one); point --from at the "
                        "robot-set folder, the repository checkout, or its archive.")
    for i, rel in enumerate(sorted(manifest), start=1):
        f = root / rel
        if f.is_file():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, staging / rel)
        if progress:
            progress("copying", i, len(manifest))


def _stage_from_archive(archive: Path, staging: Path, manifest: dict[str, str], progress: Progress | None) -> None:
    wanted = set(manifest)
    done = 0

    def take(rel: str, read) -> None:
        nonlocal done
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read())
        done += 1
        if progress:
            progress("extracting", done, len(manifest))

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    rel = None if info.is_dir() else _relative_robot_path(info.filename)
                    if rel in wanted:
                        take(rel, lambda info=info: z.read(info))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                for member in t:
                    rel = _relative_robot_path(member.name) if member.isfile() else None
                    if rel in wanted:
                        take(rel, lambda member=member: t.extractfile(member).read())
        else:
            raise DataError(f"{archive} is neither a folder nor a .tar.gz/.tar/.zip archive; pass one of those to --from.")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{archive} is damaged or truncated ({exc}); download it again.") from None


def _verify(staging: Path, manifest: dict[str, str], progress: Progress | None) -> None:
    missing, bad = [], []
    for i, (rel, digest) in enumerate(sorted(manifest.items()), start=1):
        f = staging / rel
        if not f.is_file():
            missing.append(rel)
        elif sha256_file(f) != digest:
            bad.append(rel)
        if progress:
            progress("verifying", i, len(manifest))
    if missing or bad:
        what = []
        if missing:
            what.append(f"{len(missing)} file(s) missing (e.g. {missing[0]})")
        if bad:
            what.append(f"{len(bad)} file(s) differ from the manifest (e.g. {bad[0]})")
        raise DataError(f"the UNIMAL source is incomplete or altered: {'; '.join(what)}; nothing was installed. "
                        f"Use the archive of {REPO} at commit {COMMIT[:7]}.")


def _check_install_target(target: Path) -> None:
    """An install replaces only an earlier install (it carries INSTALL_MARKER) or an empty folder."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise DataError(f"{target} exists and is not a folder; choose another --data-dir (nothing was changed).")
    if not target.exists():
        return
    if (target / INSTALL_MARKER).is_file():
        return
    try:
        empty = not any(target.iterdir())
    except OSError as exc:
        raise DataError(f"{target} cannot be read ({exc.strerror}); choose another --data-dir.") from None
    if not empty:
        raise DataError(f"{target} already holds files that kdistill did not install; choose an empty or new "
                        f"--data-dir (nothing was changed, since installing replaces the whole folder).")


def install(target: Path, source: str | os.PathLike | None = None, progress: Progress | None = None,
            url: str | None = None) -> dict:
    """Install the robot set into ``target`` from ``source`` (folder or archive) or by downloading ``url``
    (default: ``$KDISTILL_UNIMAL_URL``, a mirror of the archive, else the archive on GitHub)."""
    url = url or os.environ.get(URL_ENV_VAR) or ARCHIVE_URL
    manifest = load_manifest()
    target = Path(target).expanduser().absolute()
    _check_install_target(target)
    if source is not None and not Path(source).expanduser().exists():
        raise DataError(f"--from {Path(source).expanduser()}: no such file or folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.fetch-", dir=target.parent))
    try:
        if source is None:
            archive = staging / "download.tar.gz"
            _download(url, archive, progress)
            work = staging / "robots"
            work.mkdir()
            _stage_from_archive(archive, work, manifest, progress)
            archive.unlink()
            origin = url
        else:
            src = Path(source).expanduser()
            work = staging / "robots"
            work.mkdir()
            if src.is_dir():
                _stage_from_folder(src, work, manifest, progress)
            else:
                _stage_from_archive(src, work, manifest, progress)
            origin = str(src.absolute())
        _verify(work, manifest, progress)
        (work / INSTALL_MARKER).write_text(json.dumps({"repo": REPO, "commit": COMMIT, "files": len(manifest),
                                                        "source": origin}, indent=2) + "\n")
        # swap in: the old install (if any) is moved aside first, then removed once the new one is in place
        previous = staging / "previous"
        had_previous = target.exists()
        if had_previous:
            os.replace(target, previous)
        try:
            os.replace(work, target)
        except OSError:
            if had_previous:
                os.replace(previous, target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts = list_splits(target)
    return {"path": str(target), "source": origin, "files": len(manifest),
            "robots": {k: len(v) for k, v in counts.items()}}
