"""Names that tell whose a half-written file or folder is, and whether its writer is gone.

Two runs writing the same target at once (two exports to one folder, two processes launched apart
by mistake, two machines sharing a network disk) must never delete or rename each other's
half-written data. Every such temporary name therefore carries its writer's tag:
`<machine>-<process id>-<random>` (see `writer_tag`). A later run removes a leftover only once its
writer is gone: a process of this machine that no longer runs or, where the process cannot be
checked (another machine's or container's, a name without a writer, a process id taken since),
once nothing in it changed for `STALE_PARTIAL_SECONDS`, measured by the clock of the folder's
file system (`folder_clock`). A file whose name names no writer is never removed (`may_be_leftover`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import uuid
import zlib
from pathlib import Path

# a leftover whose writer cannot be checked is stale only after this long without a change: writing one
# shard or one model folder takes seconds to minutes
STALE_PARTIAL_SECONDS = 6 * 3600
# the writer in a temporary name, as a regular expression with the groups `machine` and `pid`
WRITER_TAG_PATTERN = r"(?P<machine>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}"
# the tags this process writes under now: a leftover of this very process is gone unless its tag is here (one
# process may write one target twice at once, from two threads or a call nested in another)
_LIVE_TAGS: set[str] = set()


def machine_tag() -> str:
    """Eight hex digits naming where this process's id means something.

    The host name alone is not enough: containers started with the host's network share its name but number
    their processes apart (a writer that is process 42 in one is no process, or another one, in the next),
    and two machines may share one name and one folder. The network card's address is named too, and on Linux
    the boot and the process-id namespace, so a writer whose process id cannot be checked from here falls under
    the time rule instead.
    """
    identity = [socket.gethostname()]
    # two machines may share a host name ("MacBook-Pro"); without /proc (macOS, BSD) the network card's address
    # tells them apart. uuid makes a random one up (multicast bit set) where it finds none: left out, as it
    # would differ between two processes of one machine
    node = uuid.getnode()
    if not node >> 40 & 1:
        identity.append(f"{node:012x}")
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            identity.append(read())
        except OSError:  # not Linux, or /proc not mounted: the host name and the card's address are all there is
            pass
    return f"{zlib.crc32(chr(0).join(identity).encode()) & 0xFFFFFFFF:08x}"


def writer_tag() -> str:
    """`<machine>-<process id>-<random>`: a name part no other writer, here or elsewhere, uses at once.

    The tag counts as live (its leftovers are kept) until `release_writer` is called with a name holding it.
    """
    tag = f"{machine_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    _LIVE_TAGS.add(tag)
    return tag


def release_writer(path: str | os.PathLike) -> None:
    """Say that this process no longer writes under the tag in `path`'s name: what it left may now be removed."""
    name = Path(path).name
    # a copy (one step): another thread may take a tag meanwhile, and a set must not grow while it is iterated
    _LIVE_TAGS.difference_update([tag for tag in _LIVE_TAGS.copy() if tag in name])


def writer_partial(path: str | os.PathLike) -> Path:
    """The `.partial` sibling of `path` that this writer alone uses: `<name>.<writer_tag>.partial`."""
    path = Path(path)
    return path.with_name(f"{path.name}.{writer_tag()}.partial")


def may_be_leftover(entry: Path, machine: str | None) -> bool:
    """Whether `entry` at a leftover's name may be the kit's at all: its name carries a writer tag, or it is a folder.

    A plain file at an untagged name (`<name>.partial`, as older versions wrote and as a user may name a file of
    their own) has nothing that proves the kit wrote it, where a folder has the kit's marker (checked by the
    caller): such a file is never removed, however old. `machine` is the tag's machine, None for an untagged name.
    """
    return machine is not None or (entry.is_dir() and not entry.is_symlink())


def writer_is_gone(entry: Path, machine: str | None, pid: str | None, now: float) -> bool:
    """Whether the writer of the leftover `entry` (its `machine` tag and `pid`, None if unnamed) has stopped.

    Only then may a later run remove `entry`. `now` is `folder_clock` of the folder holding it.
    """
    if machine == machine_tag() and pid is not None and int(pid) == os.getpid():
        # this process knows what it writes now (a copy: another thread may take a tag meanwhile)
        return not any(tag in entry.name for tag in _LIVE_TAGS.copy())
    if machine == machine_tag() and pid is not None and os.name == "posix":
        try:
            os.kill(int(pid), 0)  # signal 0: checks the process exists, sends nothing
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by another user
            pass
        # a process of that id runs: the writer, or (process ids are reused) another one since, so the
        # leftover goes once it has not changed for as long as an unchecked writer's would
    # another machine's writer, or a name without one: stale once nothing in it changed for long
    try:
        changed = max([entry.lstat().st_mtime] + [path.lstat().st_mtime for path in entry.rglob("*")])
    except OSError:
        return False
    return now - changed > STALE_PARTIAL_SECONDS


def folder_clock(folder: str | os.PathLike, probe_name: str = ".hf_bigsmall-clock") -> float:
    """Now, by the clock that stamps the files in `folder`, or by this machine's where that reads earlier.

    On a network file system the server stamps the files: a machine whose clock runs hours ahead of the server's
    (a clock set to local time, no time sync) would see another machine's leftover, written a minute ago, as
    hours old. A file written here now (`<probe_name>.<writer_tag>.partial`, removed at once) reads the folder's
    time; the earlier of the two never makes a file look older than it is.
    """
    local = time.time()
    probe = writer_partial(Path(folder) / probe_name)
    try:
        probe.write_bytes(b"")
        try:
            return min(local, probe.stat().st_mtime)
        finally:
            probe.unlink(missing_ok=True)
            release_writer(probe)
    except OSError:  # a folder this process cannot write: its own clock is all there is
        return local
