r"""Generated NTU-named videos for tests and pipeline checks (not NTU data).

    python -m experiments.ntu.synthetic --out DIR [--actions 4 --performers 1,2,3,4 ...]

Action a is a bright square doing motion a of MOTIONS (down, up, still, growing, shrinking,
blinking; motions a horizontal flip leaves alone, as the training clips are flipped) over a
noisy background; the camera sets the background tint and the performer the square's colour
and start position, so both the Cross-Subject and the Cross-View protocol have train and test
videos. Written with PyAV
(MPEG-4 part 2 in AVI, as NTU's files are AVI).
"""

import argparse
import os

import numpy as np

MOTIONS = ("down", "up", "still", "grow", "shrink", "blink")


def frames(
    action: int,
    camera: int,
    performer: int,
    replication: int,
    *,
    num_frames: int,
    height: int,
    width: int,
) -> np.ndarray:
    """uint8 [T, H, W, 3] of one generated video."""
    rng = np.random.RandomState(action * 1009 + camera * 101 + performer * 13 + replication)
    background = np.array([40 + 50 * (camera - 1), 60, 90], np.int16)
    colour = np.array([200, 120 + 20 * (performer % 5), 255 - 30 * (performer % 4)], np.int16)
    motion = MOTIONS[(action - 1) % len(MOTIONS)]
    dy = {"down": 1, "up": -1}.get(motion, 0)
    base = max(4, min(height, width) // 4)
    y0 = height // 2 + rng.randint(-2, 3)
    x0 = width // 2 + rng.randint(-2, 3)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    speed = max(1.0, min(height, width) / (2.5 * num_frames))
    for t in range(num_frames):
        f = t / max(num_frames - 1, 1)
        side = {"grow": round(base * (0.5 + f)), "shrink": round(base * (1.5 - f))}.get(
            motion, base
        )
        image = np.broadcast_to(background, (height, width, 3)).copy()
        image += rng.randint(-10, 11, image.shape).astype(np.int16)
        y = int(np.clip(y0 - side // 2 + dy * speed * (t - num_frames / 2), 0, height - side))
        x = int(np.clip(x0 - side // 2, 0, width - side))
        if motion != "blink" or t % 4 < 2:
            image[y : y + side, x : x + side] = colour
        out[t] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def write_video(path: str, video: np.ndarray, fps: int = 30) -> None:
    """Encodes uint8 [T, H, W, 3] (even H and W) as MPEG-4 in AVI with PyAV."""
    import av  # pylint: disable=import-outside-toplevel

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for image in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_videos(
    out: str,
    *,
    actions=(1, 2, 3),
    performers=(1, 2, 3, 4),
    cameras=(1, 2, 3),
    setups=(1,),
    replications=(1,),
    num_frames=12,
    height=32,
    width=40,
) -> list:
    """Writes OUT/SsssCcccPpppRrrrAaaa_rgb.avi for every combination; returns the paths.
    Performers 1, 2 and 4 train under Cross-Subject, 3 tests."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for s in setups:
        for c in cameras:
            for p in performers:
                for r in replications:
                    for a in actions:
                        path = os.path.join(
                            out, f"S{s:03d}C{c:03d}P{p:03d}R{r:03d}A{a:03d}_rgb.avi"
                        )
                        # lengths vary a little, as NTU's do
                        t = num_frames + (p + a) % 3
                        write_video(
                            path, frames(a, c, p, r, num_frames=t, height=height, width=width)
                        )
                        paths.append(path)
    return paths


def main(argv=None) -> None:
    ints = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--actions", type=ints, default=(1, 2, 3, 4))
    parser.add_argument("--performers", type=ints, default=(1, 2, 3, 4))
    parser.add_argument("--cameras", type=ints, default=(1, 2, 3))
    parser.add_argument("--replications", type=ints, default=(1, 2))
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=80)
    args = parser.parse_args(argv)
    paths = make_videos(
        args.out,
        actions=args.actions,
        performers=args.performers,
        cameras=args.cameras,
        replications=args.replications,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
    )
    print(f"{len(paths)} videos in {args.out}")


if __name__ == "__main__":
    main()
