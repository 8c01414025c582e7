"""`collapsewatch train`: run a named recipe of the bundled GRPO trainer."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    from collapsewatch.trainer.recipes import RECIPES

    p = subparsers.add_parser(
        "train",
        help="train a tool-use policy with the bundled GRPO trainer (writes a collapsewatch run)",
        description="Train with GRPO on the bundled multi-step tool environment. Runs are written to "
        "ROOT/<recipe>-s<seed>. Distributed: torchrun --nproc_per_node 2 -m collapsewatch.cli train ...",
    )
    p.add_argument(
        "--recipe", default="collapse", choices=sorted(RECIPES), help="named recipe (default: collapse)"
    )
    p.add_argument("--out", required=True, metavar="ROOT", help="folder that receives the run directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="RL steps (default: the recipe's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--model", default=None, metavar="PATH", help="local HF causal LM to start from (skips warm start)"
    )
    p.add_argument(
        "--model-size", default=None, choices=["cpu", "gpu"],
        help="built-in model: cpu (~1M parameters; the calibrated one, on a GPU too; default) or gpu (25M, "
        "not calibrated: its warm start is weak, docs/reproduction.md)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue ROOT/<recipe>-s<seed> from its checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from collapsewatch.errors import UserError
    from collapsewatch.trainer.recipes import recipe
    from collapsewatch.trainer.train import train

    torch.set_num_threads(args.threads or int(os.environ.get("COLLAPSEWATCH_THREADS", "1")))
    overrides = {"seed": args.seed, "device": args.device}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.model:
        overrides["model_path"] = args.model
    if args.model_size:
        overrides["model_size"] = args.model_size
    cfg = recipe(args.recipe, **overrides).override_from_strings(args.set)
    try:
        train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m collapsewatch.trainer.cli train ...`), also used under torchrun."""
    from collapsewatch.errors import UserError

    parser = argparse.ArgumentParser(prog="collapsewatch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
