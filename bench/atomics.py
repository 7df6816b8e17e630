#!/usr/bin/env python3
"""Per request: atomic read-modify-writes and clock reads, from a callgrind profile.

    CALLGRIND_KEEP=1 CALLGRIND_DUMP_INSTR=yes bash bench/callgrind.sh
    python3 bench/atomics.py DIR/tokengate.out.1 target/release/tokengate 2000
    python3 bench/atomics.py DIR/nginx.out.1 "$(command -v nginx)" 2000

An atomic read-modify-write (an instruction with a `lock` prefix, or `xchg` with memory,
which is locked without one) costs ~8 ns on this project's VMs even when its cache line is
this core's alone, against ~2.6 ns for a plain add; a `clock_gettime` ~37 ns. Callgrind
counts instructions, not cycles, so neither shows in the instruction figure. This script
takes callgrind's cost per instruction address in BINARY (the profile must be dumped with
`--dump-instr=yes`), finds the locked instructions in `objdump -d BINARY`, and prints how
many ran per request (REQUESTS: the requests the profile counted), by function, with the
calls to `clock_gettime` from any object.
"""
import collections
import re
import signal
import subprocess
import sys

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly

profile, binary, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])

NAMED = re.compile(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$")
names = {"ob": {}, "fn": {}}
obj = fn = callee = None
in_call = False
cost = collections.Counter()  # (address, function) -> instructions run, in BINARY
clock_reads = 0
addr = 0


def position(token, previous):
    if token == "*":
        return previous
    if token[0] in "+-":
        return previous + int(token, 0)
    return int(token, 0)


with open(profile) as lines:
    for text in lines:
        text = text.rstrip("\n")
        named = NAMED.match(text)
        if named:
            callee_side, kind, number, name = named.groups()
            if name:
                names[kind][number] = name
            if not callee_side:
                if kind == "ob":
                    obj = names["ob"].get(number)
                else:
                    fn = names["fn"].get(number)
            elif kind == "fn":
                callee = names["fn"].get(number)
            continue
        if text.startswith("calls="):
            if callee and callee.startswith("clock_gettime"):
                clock_reads += int(text.split()[0][6:])
            in_call = True
            continue
        if not text or text[0] not in "0123456789+-*":
            continue
        parts = text.split()
        addr = position(parts[0], addr)  # then the line's position, then the costs
        if in_call:  # the inclusive cost of the call on this line, not the line's own
            in_call = False
            continue
        if len(parts) > 2 and obj and obj.endswith(binary.rsplit("/", 1)[-1]):
            cost[(addr, fn)] += int(parts[2])

locked = set()
disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True, check=True)
for text in disassembly.stdout.splitlines():
    found = re.match(r"^\s*([0-9a-f]+):\s+(lock .*|xchg\s+\S*\(.*)$", text)
    if found:
        locked.add(int(found.group(1), 16))

by_function = collections.Counter()
for (address, function), runs in cost.items():
    if address in locked:
        by_function[function or "?"] += runs
total = sum(by_function.values())
print(f"{binary}: {total / requests:.1f} atomic read-modify-writes a request, {clock_reads / requests:.1f} clock_gettime calls a request")
for function, runs in by_function.most_common(30):
    print(f"{runs / requests:8.2f}  {function[:140]}")
