"""Start-up time of a model in a fresh process: ``load_package`` against compiling the same
PyTorch model again (capture + plan; the profile comes from the warm on-disk cache).

Model: a 2-layer bidirectional LSTM (40 features, hidden 96) with a linear head, 50 frames,
batch 1. Each start is a new Python process; the time counted runs from after ``import torch``
to the first output, so the ~2 s import of torch itself is left out (it is paid either way).
Starts alternate between the two ways (interleaved), and the medians are printed.

    python bench/package_load.py [--starts 5] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "package_load.md"

MODEL = """
import torch
from torch import nn

class BiLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 96, num_layers=2, bidirectional=True)
        self.head = nn.Linear(192, 10)

    def forward(self, features):
        y, _ = self.lstm(features)
        return self.head(y).log_softmax(-1)

torch.manual_seed(0)
net = BiLSTM().eval()
x = torch.randn(50, 1, 40)
"""

START = {
    "load_package": MODEL
    + """
import time
start = time.perf_counter()
import torch_chrion
model = torch_chrion.load_package(PACKAGE)
y = model(x)
seconds = time.perf_counter() - start
assert model.profiles_made == 0
torch.testing.assert_close(y, net(x).detach(), atol=1e-5, rtol=1e-5)
print(seconds)
""",
    "compile again (cached profile)": MODEL
    + """
import time
start = time.perf_counter()
import torch_chrion
from torch_chrion.api import compile_graph
from torch_chrion.settings import ChrionSettings
model = compile_graph(net, (x,), ChrionSettings())
y = model(x)
seconds = time.perf_counter() - start
torch.testing.assert_close(y, net(x).detach(), atol=1e-5, rtol=1e-5)
print(seconds)
""",
}


def start_seconds(code: str, package: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code.replace("PACKAGE", repr(str(package)))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from torch_chrion.profile.devices import cpu_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="fresh processes per way")
    parser.add_argument("--write", action="store_true", help=f"write {RESULT.relative_to(ROOT)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "bilstm"
        make = MODEL + f"import torch_chrion\ntorch_chrion.package(net, (x,), {str(package)!r})\n"
        subprocess.run(
            [sys.executable, "-c", make], env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True
        )
        times: dict[str, list[float]] = {name: [] for name in START}
        start_seconds(START["compile again (cached profile)"], package)  # warms the profile cache
        for _ in range(args.starts):
            for name, code in START.items():
                times[name].append(start_seconds(code, package))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["load_package"]
    lines = [
        "# Fresh-process start-up: load_package vs compiling again",
        "",
        "2-layer BiLSTM (40 features, hidden 96), 50 frames, batch 1; seconds from after "
        "`import torch` to the first output, each start a new process, the two ways "
        f"interleaved, median of {args.starts} starts.",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores "
        "(shared with other work: figures are noisy).",
        "Command: `python bench/package_load.py"
        + (f" --starts {args.starts}" if args.starts != 5 else "")
        + " --write`",
        "",
        "| start | median (s) | all starts (s) | vs load_package |",
        "|---|---|---|---|",
    ]
    for name, median in medians.items():
        every = ", ".join(f"{t:.2f}" for t in times[name])
        lines.append(f"| {name} | {median:.2f} | {every} | {median / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        RESULT.write_text(text)
        print(f"-> {RESULT}")


if __name__ == "__main__":
    main()
