from rlhfkit.rollout.sampling import Completions, generate

__all__ = ["Completions", "generate"]
