"""The sections of docs/benchmarks.md that the other bench scripts write
(shards.sh, growth.sh, syscalls.sh), each between <!-- NAME:begin --> and
<!-- NAME:end -->, and that report.py keeps when it writes the file anew."""
import re

NAMES = ("shards", "growth", "syscalls")


def _pattern(name):
    return re.compile(r"<!-- %s:begin -->.*?<!-- %s:end -->\n?" % (name, name), re.S)


def put(path, name, section):
    """Writes section (which starts and ends with its markers) into the file
    at path: in place of its previous copy, else at the end."""
    try:
        old = open(path).read()
    except OSError:
        old = "# Benchmarks\n\n"
    section = section.rstrip("\n") + "\n"
    if _pattern(name).search(old):
        new = _pattern(name).sub(lambda m: section, old)
    else:
        new = old.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(new)


def kept(path):
    """The sections the file at path holds now, in NAMES order."""
    try:
        old = open(path).read()
    except OSError:
        return []
    out = []
    for name in NAMES:
        m = _pattern(name).search(old)
        if m:
            out.append(m.group(0).rstrip("\n") + "\n")
    return out
