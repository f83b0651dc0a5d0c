"""`make demo`'s supervisor: gunicorn and a Celery worker side by side, stopped once by Ctrl-C.

    python -m webapp.run_demo [--host 127.0.0.1] [--port 8000] [--settings webapp.settings.demo]

Each child runs in a process group of its own, so the terminal's Ctrl-C reaches only this
process; it then sends one SIGTERM to each child (gunicorn's graceful stop, Celery's warm
shutdown), waits for both and exits. A second Ctrl-C, or children still running after
`STOP_SECONDS`, kills them outright. If either child dies on its own the other is stopped too, so
the demo is never left half up. (The shell trap this replaces, `trap 'kill 0' INT TERM EXIT`,
signalled its own group from inside its handlers, over and over: thousands of "Warm shutdown"
lines and a crashed shell.)
"""

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STOP_SECONDS = 20.0
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Runs in the child between fork and exec: its own process group (away from the terminal's
    # Ctrl-C), and on Linux a SIGTERM if this supervisor dies without cleaning up (kill -9).
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


def commands(*, host: str, port: int, var_dir: Path) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "web": [
            python,
            "-m",
            "gunicorn",
            "-c",
            str(REPO / "webapp" / "gunicorn_conf.py"),
            "--bind",
            f"{host}:{port}",
            "--workers",
            "2",
            "--graceful-timeout",
            "10",
            # One control socket per user by default: a second server on the machine would
            # take over the first one's.
            "--no-control-socket",
            "webapp.wsgi",
        ],
        # Solo pool: one process that loads torch once; beat rides along (-B) for loop ticks.
        "worker": [
            python,
            "-m",
            "celery",
            "-A",
            "webapp",
            "worker",
            "-B",
            "-s",
            str(var_dir / "celerybeat-schedule"),
            "-Q",
            "cpu",
            "-P",
            "solo",
            f"--loglevel={os.environ.get('DEMO_LOGLEVEL', 'warning')}",
        ],
    }


class Supervisor:
    def __init__(self, cmds: dict[str, list[str]], env: dict[str, str]):
        self.cmds = cmds
        self.env = env
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping_since: float | None = None
        self.killed = False

    def start(self) -> None:
        for name, cmd in self.cmds.items():
            self.children[name] = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, preexec_fn=_child_setup
            )
            print(f"run_demo: {name} pid {self.children[name].pid}", flush=True)

    def on_signal(self, signum: int, _frame) -> None:
        if self.stopping_since is None:
            print(f"\nrun_demo: {signal.Signals(signum).name}: stopping web and worker", flush=True)
            self.stop()
        else:
            print("run_demo: killing web and worker", flush=True)
            self.kill()

    def stop(self) -> None:
        self.stopping_since = time.monotonic()
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.killed = True
        for child in self.children.values():
            if child.poll() is None:
                try:
                    # The whole group: gunicorn's workers and Celery's pool go with their parent.
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        self.start()
        reported: set[str] = set()
        while True:
            running = {n: c for n, c in self.children.items() if c.poll() is None}
            for name in self.children.keys() - running.keys() - reported:
                reported.add(name)
                if self.stopping_since is not None:
                    took = time.monotonic() - self.stopping_since
                    code = self.children[name].returncode
                    print(f"run_demo: {name} stopped ({code}) after {took:.1f} s", flush=True)
            if not running:
                break
            if self.stopping_since is None and len(running) < len(self.children):
                dead = next(n for n in self.children if n not in running)
                code = self.children[dead].returncode
                print(f"run_demo: {dead} exited with {code}; stopping the rest", flush=True)
                self.stop()
            elif (
                self.stopping_since is not None
                and not self.killed
                and time.monotonic() - self.stopping_since > STOP_SECONDS
            ):
                print(f"run_demo: still running after {STOP_SECONDS:.0f} s: killing", flush=True)
                self.kill()
            time.sleep(0.1)
        codes = {n: c.returncode for n, c in self.children.items()}
        print(
            "run_demo: stopped (" + ", ".join(f"{n} {c}" for n, c in codes.items()) + ")",
            flush=True,
        )
        return 0 if all(c == 0 for c in codes.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    # Given to the children explicitly: importing this package (python -m) has already set
    # DJANGO_SETTINGS_MODULE to its default, production, in this process.
    parser.add_argument("--settings", default="webapp.settings.demo")
    args = parser.parse_args(argv)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": args.settings}
    var_dir = Path(os.environ.get("TANDEM_VAR_DIR", REPO / "var"))
    var_dir.mkdir(parents=True, exist_ok=True)
    cmds = commands(host=args.host, port=args.port, var_dir=var_dir)
    return Supervisor(cmds, env).run()


if __name__ == "__main__":
    sys.exit(main())
