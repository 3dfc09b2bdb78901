"""Rewrites one marked section of docs/BENCHMARKS.md (used by the bench scripts' --record).

usage: record_section.py FILE NAME TITLE SCRIPT MACHINE DATE TABLE

The section lies between <!-- NAME:begin --> and <!-- NAME:end -->; when the file has no
such section, one is appended under a '## TITLE' heading.
"""
import re
import sys

path, name, title, script, machine, date, table = sys.argv[1:8]
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
section = f"{begin}\nMeasured {date} by `{script} --record` on: {machine}.\n\n{table}\n{end}"
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: section, text, flags=re.S)
else:
    text += f"\n## {title}\n\n{section}\n"
open(path, "w").write(text)
