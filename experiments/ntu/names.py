"""NTU RGB+D file names and the evaluation protocols (Shahroudy et al. 2016; Liu et al. 2019).

A video is named `SsssCcccPpppRrrrAaaa_rgb.avi`: setup sss, camera ccc, performer (subject) ppp,
replication rrr, action aaa (1-based). NTU RGB+D 60 has setups 1-17, cameras 1-3, performers
1-40 and actions 1-60; NTU RGB+D 120 adds setups 18-32, performers 41-106 and actions 61-120.

Protocols (which videos train; the rest test):
- 'xsub' (Cross-Subject, NTU-60): performers XSUB_TRAIN;
- 'xview' (Cross-View, NTU-60): cameras 2 and 3 train, camera 1 tests;
- 'xsub120' (Cross-Subject, NTU-120): performers XSUB120_TRAIN;
- 'xset' (Cross-Setup, NTU-120): even setup ids train, odd ones test.
Labels are action - 1 over `num_actions` classes (60, or 120 for the NTU-120 protocols).
"""

import dataclasses
import re

NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})(?:_rgb)?(?:\.avi|\.npy)?$")
XSUB_TRAIN = frozenset((1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
XSUB120_TRAIN = XSUB_TRAIN | frozenset(
    (
        45,
        46,
        47,
        49,
        50,
        52,
        53,
        54,
        55,
        56,
        57,
        58,
        59,
        70,
        74,
        78,
        80,
        81,
        82,
        83,
        84,
        85,
        86,
        89,
        91,
        92,
        93,
        94,
        95,
        97,
        98,
        100,
        103,
    )
)
XVIEW_TRAIN_CAMERAS = frozenset((2, 3))
PROTOCOLS = ("xsub", "xview", "xsub120", "xset")
NUM_ACTIONS = {"xsub": 60, "xview": 60, "xsub120": 120, "xset": 120}


@dataclasses.dataclass(frozen=True)
class VideoName:
    setup: int
    camera: int
    performer: int
    replication: int
    action: int

    @property
    def stem(self) -> str:
        return (
            f"S{self.setup:03d}C{self.camera:03d}P{self.performer:03d}"
            f"R{self.replication:03d}A{self.action:03d}"
        )

    @property
    def label(self) -> int:
        return self.action - 1


def parse(filename: str) -> VideoName | None:
    """The fields of an NTU file name (a path's base name), None for any other name or for
    fields out of NTU-120's ranges (setup 1-32, camera 1-3, performer 1-106, action 1-120)."""
    match = NAME.match(filename.replace("\\", "/").rsplit("/", 1)[-1])
    if not match:
        return None
    name = VideoName(*(int(g) for g in match.groups()))
    ok = (
        1 <= name.setup <= 32
        and 1 <= name.camera <= 3
        and 1 <= name.performer <= 106
        and name.replication >= 1
        and 1 <= name.action <= 120
    )
    return name if ok else None


def is_train(name: VideoName, protocol: str) -> bool:
    """Whether the video trains under `protocol` (the others test)."""
    if protocol == "xsub":
        return name.performer in XSUB_TRAIN
    if protocol == "xview":
        return name.camera in XVIEW_TRAIN_CAMERAS
    if protocol == "xsub120":
        return name.performer in XSUB120_TRAIN
    if protocol == "xset":
        return name.setup % 2 == 0
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")


def split(names, protocol: str) -> tuple:
    """(train, test) lists of the VideoNames that belong to `protocol`'s dataset (NTU-60
    protocols keep actions <= 60 and setups <= 17), each sorted by stem."""
    num = NUM_ACTIONS[protocol] if protocol in NUM_ACTIONS else None
    if num is None:
        is_train(names[0] if names else VideoName(1, 1, 1, 1, 1), protocol)  # raises
    keep = [n for n in names if n.action <= num and (num == 120 or n.setup <= 17)]
    keep.sort(key=lambda n: n.stem)
    train = [n for n in keep if is_train(n, protocol)]
    test = [n for n in keep if not is_train(n, protocol)]
    return train, test
