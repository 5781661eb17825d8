"""A tiny SageMaker training script: fits y = 2x + 1 and saves the model to SM_MODEL_DIR.

Uses PyTorch when the image has it, plain Python otherwise, so the SageMaker contract can be
checked in any image. Hyperparameters arrive as --key value arguments (SageMaker toolkit).
"""

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--fail", type=int, default=0, help="exit with this code (contract test)")
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    args, _ = parser.parse_known_args()
    if args.fail:
        print(f"failing on purpose with exit code {args.fail}", file=sys.stderr)
        return args.fail

    xs = [i / 10 for i in range(20)]
    ys = [2 * x + 1 for x in xs]
    try:
        import torch

        w = torch.zeros(1, requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        x_t, y_t = torch.tensor(xs), torch.tensor(ys)
        opt = torch.optim.SGD([w, b], lr=args.lr)
        for _ in range(args.epochs):
            opt.zero_grad()
            loss = ((w * x_t + b - y_t) ** 2).mean()
            loss.backward()
            opt.step()
        weight, bias, backend = float(w), float(b), f"torch {torch.__version__}"
    except ImportError:
        weight = bias = 0.0
        for _ in range(args.epochs):
            gw = sum(2 * (weight * x + bias - y) * x for x, y in zip(xs, ys)) / len(xs)
            gb = sum(2 * (weight * x + bias - y) for x, y in zip(xs, ys)) / len(xs)
            weight, bias = weight - args.lr * gw, bias - args.lr * gb
        backend = "pure python"

    os.makedirs(args.model_dir, exist_ok=True)
    with open(os.path.join(args.model_dir, "model.json"), "w", encoding="utf-8") as handle:
        json.dump({"weight": weight, "bias": bias, "backend": backend}, handle)
    print(f"trained with {backend}: weight={weight:.3f} bias={bias:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
