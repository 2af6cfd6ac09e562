"""The quick start's training step on two MindSpore releases, side by side in one run.

    python benchmarks/bench_versions.py --new_python /work/venv-msnew/bin/python [--case 256x256] [--steps 3]

``requirements.txt`` allows MindSpore 2.7-2.10; CI installs 2.7.2 (``constraints.txt``). This runs
``bench_train.py``'s step (default recipe, batch 2, one real batch of the synthetic set, each case
in its own process) with this interpreter (the pinned release) and with ``--new_python`` (a venv
with another release and the same requirements), on the same data, and prints one JSON line per
case with its ``label``:

- ``pinned``: this interpreter as it is;
- ``new_with_fix``: the other release as users get it: importing ``src`` caps oneDNN at AVX2 when
  that release is one whose convolutions hit oneDNN's reference kernel (``src/__init__.py``);
- ``new_without_fix`` (unless ``--skip_without_fix``): the same with ``ONEDNN_MAX_CPU_ISA=ALL`` set
  beforehand, which ``src`` keeps: the trap itself.
"""

import argparse
import os
import subprocess
import sys
import tempfile

from common import REPO_ROOT, run_in_child

BENCH_TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_train.py")
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cases(new_python: str, skip_without_fix: bool):
    """(label, interpreter, environment) of each case, in the order they run."""
    clean = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
    found = [("pinned", sys.executable, clean), ("new_with_fix", new_python, clean)]
    if not skip_without_fix:
        found.append(("new_without_fix", new_python, dict(clean, ONEDNN_MAX_CPU_ISA="ALL")))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new_python", required=True, help="python of a venv with the other MindSpore release")
    parser.add_argument("--case", default="256x256", help="HxW input size (the quick start's: 256x256)")
    parser.add_argument("--steps", type=int, default=3, help="steady steps timed after the first")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--skip_without_fix", action="store_true", help="leave out the slow case without the fix")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.new_python):
        print(f"error: --new_python {args.new_python}: no such interpreter", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "synthetic")
        subprocess.run([sys.executable, "-m", "src.synthetic", "--out", data_dir, "--train", "8", "--val", "2",
                        "--seed", "0"], check=True, cwd=REPO_ROOT)
        for label, python, env in cases(args.new_python, args.skip_without_fix):
            run_in_child(BENCH_TRAIN, ["--one_case", args.case, "--steps", str(args.steps), "--batch", str(args.batch),
                                       "--data_dir", data_dir],
                         {"bench": "train_step", "image": args.case}, python=python, env=env,
                         extra={"label": label, "python": python})
    return 0


if __name__ == "__main__":
    sys.exit(main())
