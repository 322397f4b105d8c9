#!/usr/bin/env python3
"""A reward worker in Python: implements grpo's RewardService (proto/grpo.proto) with grpcio.

Any language with gRPC can do the same; grpo's trainer and `grpo reward --workers` talk to it like
to `grpo reward-worker`. The stubs are generated from proto/grpo.proto at start-up
(grpcio-tools), so nothing generated is checked in.

    pip install grpcio grpcio-tools
    python examples/python_reward_worker/worker.py --port 50052
    grpo reward --workers 127.0.0.1:50052 --name exact --input in.jsonl --output out.jsonl

Rewards served:
    exact     1.0 when the completion's last line equals the reference (after stripping spaces)
    length    the completion's length in words, divided by metadata.target_words (default 100), capped at 1
"""
import argparse
import json
import os
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def load_stubs():
    out = tempfile.mkdtemp(prefix="grpo_proto_")
    import grpc_tools
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(PROTO_DIR, "grpo.proto")])
    if rc != 0:
        raise SystemExit("cannot compile grpo.proto")
    sys.path.insert(0, out)
    import grpo_pb2
    import grpo_pb2_grpc
    return grpo_pb2, grpo_pb2_grpc


pb, pb_grpc = load_stubs()


def exact(item, meta):
    if not item.reference:
        raise ValueError("exact needs a reference")
    last = item.completion.strip().splitlines()[-1].strip() if item.completion.strip() else ""
    return 1.0 if last == item.reference.strip() else 0.0


def length(item, meta):
    target = float(meta.get("target_words", 100))
    return min(1.0, len(item.completion.split()) / target)


REWARDS = {"exact": exact, "length": length}


def parse_spec(spec):
    parts = []
    for p in spec.split(","):
        p = p.strip()
        if not p:
            continue
        name, _, w = p.partition(":")
        if name not in REWARDS:
            raise KeyError(f"unknown reward '{name}' (known: {', '.join(sorted(REWARDS))})")
        parts.append((name, float(w) if w else 1.0))
    return parts


class RewardService(pb_grpc.RewardServiceServicer):
    def __init__(self, default_spec):
        self.default_spec = default_spec

    def Score(self, request, context):
        try:
            parts = parse_spec(request.spec or self.default_spec)
        except (KeyError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        reply = pb.ScoreReply(worker="python")
        for item in request.items:
            res = reply.results.add()
            try:
                meta = json.loads(item.metadata_json) if item.metadata_json else {}
            except json.JSONDecodeError as e:
                res.error = f"metadata is not JSON: {e}"
                continue
            errors = []
            for name, weight in parts:
                try:
                    value = REWARDS[name](item, meta)
                    res.components[name] = value
                    res.reward += weight * value
                except Exception as e:  # one item's failure is that item's error
                    errors.append(f"{name}: {e}")
            res.error = "; ".join(errors)
        return reply

    def Info(self, request, context):
        return pb.RewardInfoReply(rewards=sorted(REWARDS), default_spec=self.default_spec, threads=4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50052)
    ap.add_argument("--port-file")
    ap.add_argument("--rewards", default="exact")
    a = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RewardServiceServicer_to_server(RewardService(a.rewards), server)
    port = server.add_insecure_port(f"{a.host}:{a.port}")
    server.start()
    print(f"python reward worker: listening on {a.host}:{port}", file=sys.stderr, flush=True)
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(a.port_file + ".tmp", a.port_file)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
