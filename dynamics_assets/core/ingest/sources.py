"""Where a pool's shards come from: a local folder, a ``file://`` URI, or any fsspec URI.

``resolve_source`` turns the user's ``source`` into a local folder of ``.tar`` shards:

* a path or ``file://`` URI is used in place (never copied). A ``file://`` URI is parsed as a URL
  (``local_path``): percent-escapes are decoded (``file:///data/with%20space`` is
  ``/data/with space``), ``file://localhost/data`` is ``/data``; another host, credentials, a
  query or a fragment are refused with an error naming the URI;
* another fsspec scheme (``s3://``, ``gs://``, ``memory://``, … — whatever filesystem fsspec /
  universal-pathlib can open; cloud ones need their fsspec package, e.g. ``s3fs``) is staged into
  ``cache_dir/<scheme>/<sha of the URI>/``, file by file and streamed in 8 MiB blocks (never a whole
  pool in memory), each file written to a temporary name and renamed when complete; a file whose
  size matches the remote one is not fetched again. The manifest, the loader's byte offsets and the
  landing sensor then work on the local copy.

img2dataset writes ``<shard>_stats.json`` beside each shard (``successes`` = samples written).
``img2dataset_stats`` reads them and ``stats_mismatches`` compares them with what the manifest
read, so a shard that lost samples on the way (a truncated copy, an interrupted download) is
reported.

**Credentials.** A source URI may carry them (``s3://key:secret@bucket/x``,
``https://user:p@ss@host/pool/``, ``?token=…``). ``redact`` gives the form that may be shown,
logged, recorded or written (no user, no password, no query string, no fragment), and ``scrub``
removes the secret parts of a URI from a text (an error message of fsspec or aiohttp that echoes
the URI). Nothing here puts the raw URI in a message, an exception or a file: the staging folder
is named by a hash of the redacted URI, its ``SOURCE`` file holds the redacted URI, and a failure
is a ``SourceError`` whose message is scrubbed (raised without the original exception chained).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import unquote, urlsplit

BLOCK = 1 << 23
SHARD_SUFFIXES = (".tar",)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]*\]|[^:@\[\]]*)(:[0-9]*)?$")


class SourceError(OSError):
    """A source that cannot be read or staged; the message names it in its redacted form."""


def _split(uri: str) -> tuple[str, str, str, str] | None:
    """``scheme://``, the user information (with its ``@``), what is shown, and the query string
    and fragment (with their ``?`` / ``#``); None for a text without ``scheme://``."""
    m = _SCHEME.match(uri)
    if not m:
        return None
    rest = uri[m.end():]
    userinfo = ""
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority or not _HOST_PORT.match(authority):
        at = rest.rfind("@")
        if at >= 0:
            userinfo, rest = rest[:at + 1], rest[at + 1:]
    cut = re.search(r"[?#]", rest)
    kept, after = (rest[:cut.start()], rest[cut.start():]) if cut else (rest, "")
    return m.group(0), userinfo, kept, after


def redact(uri: str) -> str:
    """``uri`` fit for logs, metadata, errors and files: no user, no password, no query string or
    fragment (where tokens, passwords and signatures travel: ``?token=…``, ``?X-Amz-Signature=…``).

    The user information ends at the LAST ``@`` (``https://user:p@ss-word@host/x`` →
    ``https://host/x``). A password with an unescaped ``/``, ``?`` or ``#`` (invalid in a URI, but
    typed) is caught too: an authority that is not ``host[:port]`` is credentials up to the last
    ``@``. Errs on the side of hiding: with credentials present, an ``@`` later in the path hides
    the path before it. A text without ``scheme://`` (a local path) is returned unchanged."""
    parts = _split(uri)
    return uri if parts is None else parts[0] + parts[2]


def _secrets(uri: str) -> list[str]:
    """The parts of ``uri`` that ``redact`` removes, raw and percent-decoded (longest first)."""
    parts = _split(uri)
    if parts is None:
        return []
    _, userinfo, _, after = parts
    found: set[str] = set()
    if userinfo:
        bare = userinfo[:-1]
        found |= {userinfo, bare}
        user, _, password = bare.partition(":")
        if len(password) >= 3:
            found.add(password)
    if after:
        found.add(after)
        found |= {v for v in re.split(r"[?#&=]", after) if len(v) >= 3}
    found |= {unquote(p) for p in found}
    return sorted((p for p in found if p), key=len, reverse=True)


def scrub(text: str, uri: str) -> str:
    """``text`` (e.g. an exception's message) with ``uri`` replaced by ``redact(uri)`` and every
    secret part of ``uri`` (user information, password, query string, fragment; raw or
    percent-decoded) replaced by ``***``."""
    text = text.replace(uri, redact(uri))
    for part in _secrets(uri):
        text = text.replace(part, "***")
    return text


def scheme_of(source: str) -> str | None:
    """The URI scheme of ``source`` (lower case), or None for a plain path."""
    m = _SCHEME.match(source)
    if m:
        return m.group(1).lower()
    return "file" if source[:5].lower() == "file:" else None


def is_local(source: str) -> bool:
    return scheme_of(source) in (None, "file")


def local_path(source: str | os.PathLike) -> Path:
    """The absolute local path of a path or a ``file:`` URI, parsed as a URL: percent-escapes
    decoded; host empty or ``localhost`` (``file://localhost/data`` is ``/data``). Refused with
    ``ValueError`` naming the URI: another host, credentials, a query or a fragment, another scheme."""
    text = os.fspath(source)
    scheme = scheme_of(text)
    if scheme is None:
        return Path(text).expanduser().resolve()
    shown = redact(text)
    if scheme != "file":
        raise ValueError(f"{shown}: only local folders and file:// URIs are read in place, not {scheme}://")
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"{shown}: a file:// URI carries no user or password (local files have none to check)")
    host = (parts.hostname or "").lower()
    if host not in ("", "localhost"):
        raise ValueError(f"{shown}: file:// URI names host {host!r}; only this machine's files can be read "
                         f"(file:///path or file://localhost/path): mount the share and give its local path")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown}: a file:// URI with a query or fragment ('?' and '#' in a file name are "
                         f"written %3F and %23)")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(f"{shown}: a file: URI needs an absolute path (file:///path)")
    return Path(path).resolve()


def resolve_source(source: str, cache_dir: str | os.PathLike) -> Path:
    """A local folder holding the source's shards (see the module docstring)."""
    if is_local(source):
        folder = local_path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"source folder {folder} does not exist")
        return folder
    return stage_remote(source, Path(cache_dir))


def stage_remote(uri: str, cache_dir: Path) -> Path:
    """Stage the shards of a remote folder under ``cache_dir`` (module docstring). Any failure is a
    ``SourceError`` whose message names the redacted URI and has the URI's secrets scrubbed."""
    shown = redact(uri)
    try:
        return _stage(uri, shown, cache_dir)
    except SourceError:
        raise
    except Exception as err:  # fsspec / aiohttp / botocore errors may echo the URI, credentials included
        raise SourceError(scrub(f"source {shown}: {type(err).__name__}: {err}", uri)) from None


def _stage(uri: str, shown: str, cache_dir: Path) -> Path:
    from upath import UPath

    remote = UPath(uri)
    if not remote.is_dir():
        raise SourceError(f"source {shown} is not a folder this machine can list")
    scheme = scheme_of(uri)
    local = cache_dir / scheme / hashlib.sha256(shown.rstrip("/").encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    wanted = sorted(p for p in remote.iterdir() if p.name.endswith(SHARD_SUFFIXES) or p.name.endswith("_stats.json"))
    if not any(p.name.endswith(SHARD_SUFFIXES) for p in wanted):
        raise SourceError(f"no .tar shards in {shown}")
    for src in wanted:
        dest = local / src.name
        size = src.stat().st_size
        if dest.exists() and dest.stat().st_size == size:
            continue
        tmp = local / f".{src.name}.part"
        with src.open("rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(BLOCK):
                fout.write(block)
        if tmp.stat().st_size != size:
            raise SourceError(f"{shown.rstrip('/')}/{src.name}: fetched {tmp.stat().st_size} bytes, "
                              f"the source lists {size}")
        os.replace(tmp, dest)
    (local / "SOURCE").write_text(shown + "\n")
    return local


def img2dataset_stats(folder: str | os.PathLike) -> dict[str, dict]:
    """``{shard file name: stats}`` from img2dataset's ``<stem>_stats.json`` files (unreadable ones
    are reported as ``{"error": …}``)."""
    out = {}
    for path in sorted(Path(folder).glob("*_stats.json")):
        shard = path.name[: -len("_stats.json")] + ".tar"
        try:
            out[shard] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            out[shard] = {"error": f"{path.name}: {e}"}
    return out


@dataclass(frozen=True)
class StatsMismatch:
    shard: str
    stated: int | None  # img2dataset's successes (None: no or unreadable stats file)
    read: int  # manifest rows read from the shard
    note: str


def stats_mismatches(stats: Mapping[str, dict], rows_per_shard: Mapping[str, int],
                     shards: Iterable[str]) -> list[StatsMismatch]:
    """Shards whose manifest row count differs from img2dataset's ``successes`` (only shards that
    have a stats file are compared; with no stats file at all nothing is reported)."""
    if not stats:
        return []
    out = []
    for shard in shards:
        s = stats.get(shard)
        read = int(rows_per_shard.get(shard, 0))
        if s is None:
            out.append(StatsMismatch(shard, None, read, "no _stats.json beside it"))
        elif "error" in s:
            out.append(StatsMismatch(shard, None, read, s["error"]))
        elif int(s.get("successes", read)) != read:
            out.append(StatsMismatch(shard, int(s["successes"]), read,
                                     f"img2dataset wrote {s['successes']} samples, the manifest read {read}"))
    return out
