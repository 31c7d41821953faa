"""The 40 BabyAI levels of the original (AgentGym's `all_levels`, docs/original.md §4.3) and `level:seed` task ids."""
from __future__ import annotations

from envs.base import EnvError

LEVELS: tuple[str, ...] = (
    "BabyAI-GoToRedBallGrey-v0", "BabyAI-GoToRedBall-v0", "BabyAI-GoToRedBallNoDists-v0",
    "BabyAI-GoToObjS6-v1",  # AgentGym says -v0, which minigrid 3.x no longer registers
    "BabyAI-GoToLocalS8N7-v0", "BabyAI-GoToObjMazeS7-v0", "BabyAI-GoToImpUnlock-v0", "BabyAI-GoToSeqS5R2-v0",
    "BabyAI-GoToRedBlueBall-v0", "BabyAI-GoToDoor-v0", "BabyAI-GoToObjDoor-v0", "BabyAI-Open-v0",
    "BabyAI-OpenRedDoor-v0", "BabyAI-OpenDoorLoc-v0", "BabyAI-OpenRedBlueDoorsDebug-v0",
    "BabyAI-OpenDoorsOrderN4Debug-v0", "BabyAI-Pickup-v0", "BabyAI-UnblockPickup-v0", "BabyAI-PickupLoc-v0",
    "BabyAI-PickupDistDebug-v0", "BabyAI-PickupAbove-v0", "BabyAI-PutNextLocalS6N4-v0",
    "BabyAI-PutNextS7N4Carrying-v0", "BabyAI-Unlock-v0", "BabyAI-UnlockLocalDist-v0", "BabyAI-KeyInBox-v0",
    "BabyAI-UnlockPickupDist-v0", "BabyAI-BlockedUnlockPickup-v0", "BabyAI-UnlockToUnlock-v0",
    "BabyAI-ActionObjDoor-v0", "BabyAI-FindObjS7-v0", "BabyAI-KeyCorridorS6R3-v0", "BabyAI-OneRoomS20-v0",
    "BabyAI-MoveTwoAcrossS8N9-v0", "BabyAI-SynthS5R2-v0", "BabyAI-SynthLoc-v0", "BabyAI-SynthSeq-v0",
    "BabyAI-MiniBossLevel-v0", "BabyAI-BossLevel-v0", "BabyAI-BossLevelNoUnlock-v0",
)
"""Item i of the original's 40 test tasks is LEVELS[i] with seed 0."""

SPLITS = ("train", "valid", "test")
VALID_FIRST_SEED = 1000
"""`valid` = seeds VALID_FIRST_SEED .. VALID_FIRST_SEED + VALID_SEEDS_PER_LEVEL - 1 of each level: disjoint from
`train` (seeds 1..train_seeds_per_level, which must stay below VALID_FIRST_SEED) and from `test` (seed 0), for
choosing settings without touching the test split."""
VALID_SEEDS_PER_LEVEL = 5


def parse_task_id(task_id: str) -> tuple[str, int]:
    """`BabyAI-GoToRedBall-v0:3` -> ("BabyAI-GoToRedBall-v0", 3); any registered BabyAI level is accepted."""
    level, sep, seed_text = str(task_id).rpartition(":")
    if not sep or not seed_text.isdigit():
        raise EnvError(f"bad babyai task id {task_id!r}; expected '<level>:<seed>' such as '{LEVELS[0]}:0'")
    import gymnasium
    import minigrid  # noqa: F401  (registers the BabyAI levels)

    if not level.startswith("BabyAI-") or level not in gymnasium.registry:
        raise EnvError(f"unknown babyai level {level!r} in task id {task_id!r}; expected a registered BabyAI "
                       f"level, e.g. one of the original's 40: {', '.join(LEVELS[:3])}, ...")
    return level, int(seed_text)


def split_task_ids(split: str, train_seeds_per_level: int = 25) -> list[str]:
    """`test`: seed 0 of the 40 levels; `train`: seeds 1..train_seeds_per_level of each level; `valid`: seeds
    VALID_FIRST_SEED.. (VALID_SEEDS_PER_LEVEL per level, 200 tasks), disjoint from both."""
    if split == "test":
        return [f"{level}:0" for level in LEVELS]
    if split == "train":
        if not 1 <= train_seeds_per_level < VALID_FIRST_SEED:
            raise EnvError(f"train_seeds_per_level must be 1..{VALID_FIRST_SEED - 1} (seeds from {VALID_FIRST_SEED} "
                           f"are the valid split), got {train_seeds_per_level}")
        return [f"{level}:{seed}" for seed in range(1, train_seeds_per_level + 1) for level in LEVELS]
    if split == "valid":
        return [f"{level}:{seed}" for seed in range(VALID_FIRST_SEED, VALID_FIRST_SEED + VALID_SEEDS_PER_LEVEL)
                for level in LEVELS]
    raise EnvError(f"unknown babyai split {split!r}; expected one of {list(SPLITS)}")
