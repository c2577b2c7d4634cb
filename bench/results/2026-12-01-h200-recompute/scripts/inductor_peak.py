"""The peak of live buffers in Inductor's generated ``call()`` (from a TORCH_LOGS=output_code log),
per pair slot, with the buffers live at that point: which intermediates a compiled joint graph keeps.

    python inductor_peak.py LOG [GRAPH_INDEX]

Pair slots: the first dimension of the radial basis buffer ([slots, 20], the reference PaiNN's).
"""
import re
import sys

BYTES = {"torch.float32": 4, "torch.float16": 2, "torch.int64": 8, "torch.float64": 8, "torch.bool": 1, "torch.int32": 4}


def calls(path):
    lines = [line.split("[__output_code]", 1)[1] for line in open(path) if "[__output_code]" in line]
    starts = [index for index, line in enumerate(lines) if "def call(self, args)" in line]
    return [lines[start:] for start in starts]


def peak(body, slots):
    live, best, best_set, best_line = {}, 0, {}, ""
    for line in body:
        line = line.strip()
        if line.startswith("return ("):
            break
        made = re.match(r"(buf\d+) = empty_strided_\w+\(\(([^)]*)\), \([^)]*\), (torch\.\w+)\)", line)
        if made:
            numel = 1
            for size in made.group(2).replace(" ", "").split(","):
                if size:
                    numel *= int(size)
            live[made.group(1)] = (numel * BYTES.get(made.group(3), 4), made.group(2))
        reused = re.match(r"(buf\d+) = (?:reinterpret_tensor\()?(buf\d+)[,;].*del (buf\d+)", line)
        if reused and reused.group(2) in live:
            live[reused.group(1)] = live.pop(reused.group(2))
        for name in re.findall(r"^del (buf\d+)", line):
            live.pop(name, None)
        total = sum(size for size, _ in live.values())
        if total > best:
            best, best_set, best_line = total, dict(live), line[:120]
    print(f"peak {best / slots:.0f} bytes per pair slot, at: {best_line}")
    for name, (size, shape) in sorted(best_set.items(), key=lambda item: -item[1][0]):
        if size / slots >= 4:
            print(f"   {name} ({shape}) {size / slots:.0f}")


bodies = calls(sys.argv[1])
body = bodies[int(sys.argv[2]) if len(sys.argv) > 2 else 0]
slots = next(int(found.group(1)) for line in body if (found := re.search(r"empty_strided_\w+\(\((\d+), 20\)", line)))
print(f"{len(bodies)} compiled graphs in {sys.argv[1]}; {slots} pair slots")
peak(body, slots)
