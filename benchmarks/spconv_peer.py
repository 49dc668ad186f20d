"""The peer for benchmarks/model_step.py --peer spconv: the same SpUNet-v1m3 train step in torch + spconv.

Written here from the architecture (docs/model.md), not taken from Pointcept: stem SubMConv3d 5^3, four
stride-2 SparseConv3d downs each followed by BasicBlocks of SubMConv3d 3^3 (2, 3, 4, 6), four
SparseInverseConv3d ups with the skip concatenated and BasicBlocks (2, 2, 2, 2), widths 32..256..96,
BatchNorm1d (momentum 0.01, eps 1e-3) after every conv, a linear 20-class head, cross-entropy, and a
Nesterov SGD update. One BatchNorm per layer (the PDNorm of a single-dataset batch normalises the same
way; its prompt modulation is a (B, 256) x (256, 2C) matmul per norm, negligible).

Install (a scratch venv that also sees the project's packages):
    python3 -m venv --system-site-packages /tmp/venv-peer && /tmp/venv-peer/bin/pip install torch==2.13.0 spconv==2.3.8
spconv's CPU kernels are only correct with one torch thread (wrong rows otherwise), and its CPU backward
asks for a CUDA stream: both are set here.
"""

import numpy as np

CHANNELS = (32, 64, 128, 256, 256, 128, 96, 96)
LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)


def make_step(coords, feat, segment):
    """() -> None: one train step (forward, loss, backward, SGD update) on the given crop."""
    import spconv.pytorch as spconv
    import torch
    from torch import nn

    spconv.ops.get_current_stream = lambda: 0
    torch.set_num_threads(1)
    torch.manual_seed(0)

    def bn(c):
        return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)

    class Block(spconv.SparseModule):
        def __init__(self, cin, cout, key):
            super().__init__()
            self.conv1 = spconv.SubMConv3d(cin, cout, 3, bias=False, indice_key=key)
            self.bn1, self.bn2 = bn(cout), bn(cout)
            self.conv2 = spconv.SubMConv3d(cout, cout, 3, bias=False, indice_key=key)
            self.proj = None
            if cin != cout:
                self.proj = spconv.SparseSequential(spconv.SubMConv3d(cin, cout, 1, bias=False), bn(cout))

        def forward(self, x):
            h = self.conv1(x)
            h = h.replace_feature(torch.relu(self.bn1(h.features)))
            h = self.conv2(h)
            h = h.replace_feature(self.bn2(h.features))
            skip = x.features if self.proj is None else self.proj(x).features
            return h.replace_feature(torch.relu(h.features + skip))

    def unit(conv, c):
        return spconv.SparseSequential(conv, bn(c), nn.ReLU())

    class SpUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = unit(spconv.SubMConv3d(6, 32, 5, bias=False, indice_key="stem"), 32)
            self.down, self.enc, self.up, self.dec = (nn.ModuleList() for _ in range(4))
            c = 32
            for s in range(4):
                self.down.append(unit(spconv.SparseConv3d(c, CHANNELS[s], 2, stride=2, bias=False,
                                                          indice_key=f"spconv{s + 1}"), CHANNELS[s]))
                c = CHANNELS[s]
                self.enc.append(spconv.SparseSequential(*[Block(c, c, f"subm{s + 1}") for _ in range(LAYERS[s])]))
            skips = [32] + list(CHANNELS[:3])
            for s in reversed(range(4)):
                w = CHANNELS[7 - s]
                self.up.append(unit(spconv.SparseInverseConv3d(c, w, 2, bias=False, indice_key=f"spconv{s + 1}"), w))
                key = f"subm{s}"
                self.dec.append(spconv.SparseSequential(Block(w + skips[s], w, key),
                                                        *[Block(w, w, key) for _ in range(LAYERS[7 - s] - 1)]))
                c = w
            self.head = nn.Linear(c, 20)

        def forward(self, x):
            x = self.stem(x)
            skips = [x]
            for down, enc in zip(self.down, self.enc):
                x = enc(down(x))
                skips.append(x)
            x = skips.pop()
            for up, dec in zip(self.up, self.dec):
                x = up(x)
                x = dec(x.replace_feature(torch.cat([x.features, skips.pop().features], 1)))
            return self.head(x.features)

    model = SpUNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    idx = torch.from_numpy(np.concatenate([np.zeros((len(coords), 1), np.int32), coords], 1).astype(np.int32))
    feats = torch.from_numpy(np.asarray(feat, np.float32))
    target = torch.from_numpy(np.asarray(segment, np.int64))
    shape = (np.asarray(coords).max(0) + 3).tolist()

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(spconv.SparseConvTensor(feats, idx, shape, 1))
        loss = nn.functional.cross_entropy(out, target, ignore_index=-1)
        loss.backward()
        opt.step()

    def forward_eval():
        model.eval()
        with torch.no_grad():
            model(spconv.SparseConvTensor(feats, idx, shape, 1))
        model.train()

    return step, forward_eval, sum(p.numel() for p in model.parameters())
