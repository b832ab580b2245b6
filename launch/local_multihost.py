"""Run a multi-process JAX job on this machine (CPU devices, gloo collectives).

  python launch/local_multihost.py --num_processes=2 --devices_per_process=2 -- \\
      --config=configs/motion.py:test --workdir=/tmp/motion_mh

Starts N copies of ``launch/train.py`` joined through a coordinator on localhost, each with
``devices_per_process`` simulated CPU devices, and writes each process's output to
``WORKDIR/logs/process_<i>.log``. If a process fails, the launcher says which one and how, stops
the others after ``--grace`` seconds (they normally fail on their own once the heartbeat times
out), and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workdir(train_args: list[str]) -> str:
    for i, a in enumerate(train_args):
        if a.startswith("--workdir="):
            return a.split("=", 1)[1]
        if a == "--workdir" and i + 1 < len(train_args):
            return train_args[i + 1]
    raise SystemExit("local_multihost: pass --workdir=DIR among the training arguments.")


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch(num_processes: int, devices_per_process: int, train_args: list[str], *,
           script: str = os.path.join(HERE, "train.py"), heartbeat_timeout: int = 20,
           grace: float = 60.0, port: int | None = None) -> int:
    """Run the job; returns 0 if every process succeeded, else 1."""
    workdir = _workdir(train_args)
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    address = f"localhost:{port or free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    procs, files = [], []
    for i in range(num_processes):
        f = open(os.path.join(logs, f"process_{i}.log"), "w")
        cmd = [sys.executable, script, *train_args, f"--coordinator_address={address}",
               f"--num_processes={num_processes}", f"--process_id={i}",
               f"--heartbeat_timeout={heartbeat_timeout}"]
        procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env))
        files.append(f)
    failed_at, failure = None, None
    try:
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                code = p.poll()
                if code not in (None, 0) and failure is None:
                    failure = (i, code)
                    failed_at = time.time()
                    print(f"local_multihost: process {i} {_describe(code)}; see "
                          f"{os.path.join(logs, f'process_{i}.log')}. Waiting up to {grace:.0f} s "
                          "for the others to stop.", file=sys.stderr, flush=True)
            if failed_at is not None and time.time() - failed_at > grace:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    finally:
        for f in files:
            f.close()
    codes = [p.returncode for p in procs]
    if all(c == 0 for c in codes):
        return 0
    for i, c in enumerate(codes):
        if c != 0:
            print(f"local_multihost: process {i} {_describe(c)}.", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: local_multihost.py [options] -- <launch/train.py arguments>")
    split = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_processes", type=int, default=2)
    ap.add_argument("--devices_per_process", type=int, default=2)
    ap.add_argument("--heartbeat_timeout", type=int, default=20)
    ap.add_argument("--grace", type=float, default=60.0)
    ap.add_argument("--port", type=int, default=None)
    args = ap.parse_args(argv[:split])
    return launch(args.num_processes, args.devices_per_process, argv[split + 1:],
                  heartbeat_timeout=args.heartbeat_timeout, grace=args.grace, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
