"""rlhfkit: SFT -> reward model -> PPO, the InstructGPT recipe done carefully."""

__version__ = "0.1.0"
