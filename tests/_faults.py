"""Fault injection for the crash-safety tests: the k-th file-system call fails.

``FaultInjector(monkeypatch, step, mode)`` wraps the calls that change files
(``os.open``, ``os.write``, ``os.fsync``, ``os.replace``, ``os.mkdir``,
``os.remove``, ``os.unlink``, ``os.rmdir``, ``os.rename`` and
``torch.save``) and counts them. At call number ``step``:

- ``mode="kill"``: a ``write`` or ``torch.save`` first writes half of its
  bytes, then :class:`Killed` (a ``BaseException``) is raised and every later
  call raises it too, so no clean-up code can touch the disk: what is left is
  what a SIGKILL at that instant would leave;
- ``mode="raise"``: an ``OSError`` is raised once (a full disk, a permission
  error), and clean-up code runs as usual.

``step=-1`` never fails and only counts (``calls``).
"""

import os

import torch


class Killed(BaseException):
    """The process "dies": this and every later file-system call fail."""


_OPS = (
    "open",
    "write",
    "fsync",
    "replace",
    "mkdir",
    "remove",
    "unlink",
    "rmdir",
    "rename",
)


class FaultInjector:
    def __init__(self, monkeypatch, step, mode="kill"):
        assert mode in ("kill", "raise")
        self.step = step
        self.mode = mode
        self.calls = 0
        self.dead = False
        self.log = []
        for name in _OPS:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))
        monkeypatch.setattr(torch, "save", self._wrap("torch.save", torch.save))

    def _fail(self, name, index):
        if self.mode == "kill":
            self.dead = True
            raise Killed(f"{name} #{index}")
        raise OSError(28, f"injected failure of {name} #{index}")

    def _wrap(self, name, fn):
        def call(*args, **kwargs):
            if self.dead:
                raise Killed(f"{name} after the kill")
            index = self.calls
            self.calls += 1
            self.log.append(name)
            if index != self.step:
                return fn(*args, **kwargs)
            if self.mode == "kill" and name == "write":
                data = bytes(args[1])
                fn(args[0], data[: max(1, len(data) // 2)])
            elif self.mode == "kill" and name == "torch.save":
                fn(*args, **kwargs)
                target = args[1]
                if isinstance(target, str | os.PathLike):
                    size = os.path.getsize(target)
                    with open(target, "r+b") as fh:
                        fh.truncate(size // 2)
            self._fail(name, index)

        return call
