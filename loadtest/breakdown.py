#!/usr/bin/env python3
"""Where the server's time goes, per process, while a load runs against the local cluster.

Over a window of WINDOW seconds (default 10), for each process of deploy/local-cluster.sh
(nats-server, router, worker, gateways; their pids from CLUSTER_DIR, .local/cluster): CPU and
context switches (voluntary: wake-ups; involuntary: preemptions), each per chat message taken
in; and NATS messages in and out per chat message (nats-server's /varz on NATS_MONITOR_PORT,
8222). Chat messages and deliveries are the gateways' own counters (their admin ports,
ADMIN_PORTS "9080 9081"). Then, over a second window of half the length, system calls per chat
message, counted by `perf stat` on the `raw_syscalls:sys_enter` tracepoint (root, or
perf_event_paranoid at most 1; without it that column is left out): counting them slows every
system call, so the first window's figures are taken without it.

    chat-loadtest fanout --rooms 200 --members 10 --rate 2000 --duration 40s &
    sleep 10; loadtest/breakdown.py 10
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def processes(state):
    found = {}
    for name in sorted(os.listdir(state)):
        if name.endswith(".pid") and name != "lb.pid":
            with open(os.path.join(state, name)) as f:
                pid = int(f.read().strip())
            if os.path.exists(f"/proc/{pid}"):
                found[name[:-4]] = pid
    return found


def sample(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    switches = {"voluntary": 0, "nonvoluntary": 0}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    for kind in switches:
                        if line.startswith(f"{kind}_ctxt_switches:"):
                            switches[kind] += int(line.split()[1])
        except FileNotFoundError:
            pass  # A thread that ended.
    return cpu, switches["voluntary"], switches["nonvoluntary"]


def counters(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for name in ("chat_gateway_messages_received_total", "chat_gateway_deliveries_total"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    return values


def varz(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as response:
        data = json.load(response)
    return data["in_msgs"], data["out_msgs"]


def count_syscalls(procs, window, admin_ports):
    """System calls per chat message of each process, over `window` seconds."""
    perf = {
        name: subprocess.Popen(
            ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(pid),
             "--", "sleep", str(window)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, pid in procs.items()
    }
    before = [counters(p) for p in admin_ports]
    counts = {}
    for name, process in perf.items():
        _, err = process.communicate()
        for line in err.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2] == "raw_syscalls:sys_enter" and parts[0].isdigit():
                counts[name] = int(parts[0])
    after = [counters(p) for p in admin_ports]
    messages = sum(a["chat_gateway_messages_received_total"] - b["chat_gateway_messages_received_total"]
                   for a, b in zip(after, before))
    return {name: count / messages for name, count in counts.items()} if messages else {}


def main():
    window = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    state = os.environ.get("CLUSTER_DIR", ".local/cluster")
    admin_ports = os.environ.get("ADMIN_PORTS", "9080 9081").split()
    monitor = os.environ.get("NATS_MONITOR_PORT", "8222")
    procs = processes(state)
    before = {name: sample(pid) for name, pid in procs.items()}
    gw_before = [counters(p) for p in admin_ports]
    nats_before = varz(monitor)
    time.sleep(window)
    after = {name: sample(pid) for name, pid in procs.items()}
    gw_after = [counters(p) for p in admin_ports]
    nats_after = varz(monitor)

    def delta(name, later, earlier):
        return sum(a[name] - b[name] for a, b in zip(later, earlier))

    messages = delta("chat_gateway_messages_received_total", gw_after, gw_before)
    deliveries = delta("chat_gateway_deliveries_total", gw_after, gw_before)
    if messages == 0:
        sys.exit("no chat message was taken in during the window: is a load running?")
    syscalls = count_syscalls(procs, window / 2, admin_ports) if shutil.which("perf") else {}
    print(f"window {window:.0f} s: {messages / window:,.0f} chat messages/s in, "
          f"{deliveries / window:,.0f} deliveries/s out ({deliveries / messages:.1f} per message)")
    header = f"{'process':<12} {'CPU %':>7} {'µs/msg':>8} {'µs/deliv':>9} {'wake-ups/msg':>13} {'preempt/msg':>12}"
    if syscalls:
        header += f" {'syscalls/msg':>13}"
    print(header)
    total = 0.0
    for name in procs:
        cpu = after[name][0] - before[name][0]
        total += cpu
        line = (f"{name:<12} {100 * cpu / window:>7.1f} {1e6 * cpu / messages:>8.1f} "
                f"{1e6 * cpu / deliveries:>9.2f} "
                f"{(after[name][1] - before[name][1]) / messages:>13.2f} "
                f"{(after[name][2] - before[name][2]) / messages:>12.2f}")
        if name in syscalls:
            line += f" {syscalls[name]:>13.2f}"
        print(line)
    print(f"{'all':<12} {100 * total / window:>7.1f} {1e6 * total / messages:>8.1f} "
          f"{1e6 * total / deliveries:>9.2f}")
    nats_in = nats_after[0] - nats_before[0]
    nats_out = nats_after[1] - nats_before[1]
    print(f"NATS per chat message: {nats_in / messages:.2f} in, {nats_out / messages:.2f} out")


if __name__ == "__main__":
    main()
