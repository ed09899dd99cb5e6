#!/usr/bin/env python3
"""Writes the conformance report of an Autobahn|Testsuite run (scripts/autobahn.sh).

Reads wstest's reports/servers/index.json (and each case's own JSON for the
reasons), writes a Markdown page, prints a summary, and exits 1 when any
case's behaviour is not OK, NON-STRICT or INFORMATIONAL (wstest itself
exits 0 whatever the cases did).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections import Counter, defaultdict

PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
ORDER = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED", "NO CLOSE")

# The suite's chapters (its own headings).
GROUPS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "WebSocket Compression (different payloads)",
    "13": "WebSocket Compression (different parameters)",
}


# Why a case is not OK, where the reason is known (docs/security.md, "WebSocket
# conformance", has the details). Keyed by case id or by a prefix ending in ".".
NOTES = {
    "6.4.": "yawc checks UTF-8 once a text message is whole (WebSocket::on_frame, "
    "after FragmentLayer::assemble_incoming), not at the first bad fragment: "
    "the close (1007) comes at the end of the message instead of at once.",
    "7.1.6": "Informational by the suite's design: a message, a close and a ping "
    "sent back to back; what comes back before the close is up to the implementation "
    "(here both messages, then the close).",
    "7.13.": "Informational by the suite's design: close codes 5000 and up are "
    "undefined by RFC 6455; the node fails the connection with 1002.",
}


def note(case_id):
    for key, text in NOTES.items():
        if case_id == key or (key.endswith(".") and case_id.startswith(key)):
            return text
    return ""


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f", {kib / 1048576:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.system()} {platform.release()} {platform.machine()}, {cpu or 'unknown CPU'}, {os.cpu_count()} cores{mem}"


def commit():
    head = sh("git", "rev-parse", "--short=12", "HEAD")
    if not head:
        return "unknown"
    dirty = sh("git", "status", "--porcelain", "--untracked-files=no")
    return head + (" with uncommitted changes" if dirty else "")


def cell(text, limit=300):
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt_seconds(seconds):
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--doc", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--cases", default="*")
    ap.add_argument("--exclude", default="")
    ap.add_argument("--millis", type=int, required=True)
    ap.add_argument("--node-alive", default="yes")
    ap.add_argument("--node-env", default="")
    ap.add_argument("--suite", default="")
    ap.add_argument("--suite-version", default="")
    args = ap.parse_args()

    with open(args.index) as f:
        index = json.load(f)
    reports = os.path.dirname(args.index)
    agent = "roomcast"
    cases = index.get(agent, {})
    if not cases:
        print(f"autobahn: no case ran ({args.index} is empty)", file=sys.stderr)
        return 1
    ids = sorted(cases, key=case_key)

    details = {}
    for cid in ids:
        path = os.path.join(reports, cases[cid]["reportfile"])
        try:
            with open(path) as f:
                details[cid] = json.load(f)
        except (OSError, ValueError):
            details[cid] = {}

    behaviour = Counter(cases[c]["behavior"] for c in ids)
    closing = Counter(cases[c]["behaviorClose"] for c in ids)
    by_group = defaultdict(Counter)
    by_sub = defaultdict(Counter)
    for cid in ids:
        parts = cid.split(".")
        by_group[parts[0]][cases[cid]["behavior"]] += 1
        by_sub[".".join(parts[:2])][cases[cid]["behavior"]] += 1
    seen = [b for b in ORDER if behaviour[b]] + sorted(b for b in behaviour if b not in ORDER)
    columns = list(dict.fromkeys(["OK", "NON-STRICT", "INFORMATIONAL", "FAILED"] + seen))
    failing = [c for c in ids if cases[c]["behavior"] not in PASSING]
    not_ok = [c for c in ids if cases[c]["behavior"] != "OK" or cases[c]["behaviorClose"] != "OK"]
    total_ms = sum(cases[c].get("duration", 0) for c in ids)
    slowest = sorted(ids, key=lambda c: -cases[c].get("duration", 0))[:5]

    suite = {}
    for item in args.suite.split():
        if "==" in item:
            name, version = item.split("==", 1)
            suite[name.lower()] = version
    if args.suite_version:
        suite["autobahntestsuite"] = args.suite_version
    suite_text = ", ".join(
        f"{n} {suite[n]}" for n in ("autobahntestsuite", "autobahn", "twisted") if n in suite
    ) or "autobahntestsuite"

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    verdict = "passed" if not failing else f"FAILED ({len(failing)} case(s))"
    counts = ", ".join(f"{behaviour[b]} {b}" for b in seen)
    out = []
    w = out.append
    w("# WebSocket conformance (Autobahn|Testsuite)")
    w("")
    w(
        "Written by `make autobahn` (scripts/autobahn.sh, scripts/autobahn-report.py) "
        "at each full run; do not edit by hand. The suite's fuzzing client ran every "
        "case against a real gateway node in echo mode (`websocket.echo_path`, "
        "docs/configuration.md): the node's own upgrade handler, yawc options, outbox "
        "and writes, with only the protocol replaced by an echo. OK, NON-STRICT and "
        "INFORMATIONAL count as passing; anything else fails the run. What the suite "
        "found and what was done about it: docs/security.md, \"WebSocket conformance\"."
    )
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| Result | **{verdict}**: {len(ids)} cases, {counts} |")
    w(f"| Command | `{args.command}` |")
    w(f"| Date | {now} |")
    w(f"| Commit | {commit()} |")
    w(f"| Machine | {cell(machine())} |")
    w(f"| Gateway | {args.profile} build, {cell(sh('rustc', '--version') or 'rustc ?')} |")
    w(f"| Node settings | {', '.join('`' + e + '`' for e in args.node_env.split() if e)} |")
    w(f"| Suite | {suite_text}, Python 2.7.18 (pyenv), from PyPI |")
    sel = f"`{args.cases}`" + (f" excluding `{args.exclude}`" if args.exclude else "")
    w(f"| Cases | {sel} |")
    w(
        f"| Time | {fmt_seconds(args.millis / 1000)} wall clock (the cases' own durations add up to "
        f"{fmt_seconds(total_ms / 1000)}; slowest: "
        + ", ".join(f"{c} {cases[c].get('duration', 0) / 1000:.1f} s" for c in slowest)
        + ") |"
    )
    w(f"| Node alive after the run | {args.node_alive} |")
    w("")
    w("## By behaviour")
    w("")
    w("| behaviour | cases |")
    w("|---|---:|")
    for b in seen:
        w(f"| {b} | {behaviour[b]} |")
    w("")
    w("Closing behaviour (how the connection ended, judged apart from the case's outcome):")
    w("")
    w("| closing behaviour | cases |")
    w("|---|---:|")
    for b, n in sorted(closing.items(), key=lambda kv: (kv[0] != "OK", kv[0])):
        w(f"| {b} | {n} |")
    w("")
    w("## By case group")
    w("")
    w("| group | | cases | " + " | ".join(columns) + " |")
    w("|---|---|---:|" + "---:|" * len(columns))
    for g in sorted(by_group, key=case_key):
        counter = by_group[g]
        w(
            f"| {g} | {GROUPS.get(g, '')} | {sum(counter.values())} | "
            + " | ".join(str(counter[b]) for b in columns)
            + " |"
        )
    w("")
    w("<details><summary>By sub-group</summary>")
    w("")
    w("| sub-group | cases | " + " | ".join(columns) + " |")
    w("|---|---:|" + "---:|" * len(columns))
    for g in sorted(by_sub, key=case_key):
        counter = by_sub[g]
        w(f"| {g} | {sum(counter.values())} | " + " | ".join(str(counter[b]) for b in columns) + " |")
    w("")
    w("</details>")
    w("")
    w("## Cases not OK")
    w("")
    if not not_ok:
        w("None: every case's behaviour and closing behaviour is OK.")
    else:
        w(
            "Every case whose behaviour or closing behaviour is not OK: the case, the "
            "suite's expectation, its verdict and what it saw, and why, where known:"
        )
        w("")
        w("| case | behaviour | closing | close code | case and expectation | verdict | why |")
        w("|---|---|---|---:|---|---|---|")
        for cid in not_ok:
            c = cases[cid]
            d = details.get(cid, {})
            what = cell(d.get("description", ""), 200)
            if d.get("expectation"):
                what += " *Expected:* " + cell(d["expectation"], 200)
            verdict = d.get("result", "")
            if c["behaviorClose"] != "OK":
                verdict += " Closing: " + d.get("resultClose", "").rstrip(".") + "."
            expected = d.get("expected") or {}
            if c["behavior"] != "OK" and "OK" in expected:
                verdict += f" Received {d.get('received')}; OK would be {expected['OK']}."
            w(
                f"| {cid} | {c['behavior']} | {c['behaviorClose']} | {c.get('remoteCloseCode')} | "
                f"{what} | {cell(verdict, 400)} | {note(cid)} |"
            )
    w("")

    os.makedirs(os.path.dirname(os.path.abspath(args.doc)), exist_ok=True)
    with open(args.doc, "w") as f:
        f.write("\n".join(out))
    print(
        f"autobahn: {len(ids)} cases in {fmt_seconds(args.millis / 1000)}: {counts}; report: {args.doc}",
        file=sys.stderr,
    )
    for cid in failing:
        d = details.get(cid, {})
        print(
            f"autobahn: {cid} {cases[cid]['behavior']}: {cell(d.get('description', ''), 120)} "
            f"-- {cell(d.get('result', ''), 200)}",
            file=sys.stderr,
        )
    if args.node_alive != "yes":
        print("autobahn: the gateway died during the run", file=sys.stderr)
        return 1
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
