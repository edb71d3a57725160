/**
 * A node other than node 0 of a multi-node run (--node-rank k > 0): no HTTP server and no
 * scheduler, only this host's tensor-parallel ranks. It joins node 0 (src/engine/nodes.ts),
 * starts its GPU workers, and relays: every batch record node 0 sends goes into each local
 * worker's ring; the workers' results are drained and dropped (node 0 reads its own ranks',
 * which the collectives keep in lockstep). It ends when node 0 goes away or shuts down.
 */

import { loadModelConfig } from "../model/config.ts";
import { tpError } from "../model/tp.ts";
import { Ring } from "../ipc/ring.ts";
import { KIND_SHUTDOWN, recordKind } from "../ipc/batch_codec.ts";
import type { Frame, NodeLink } from "../ipc/node_link.ts";
import { type EngineConfig, ranksPerNode } from "./config.ts";
import { type EngineProgress, type GpuWorker, ringSizes, startNodeWorkers } from "./gpu_workers.ts";
import { joinNodes } from "./nodes.ts";

/** Runs this node until node 0 ends the run; resolves with the exit code (0 after node 0's
 *  shutdown, 1 when it went away or a local worker failed). Start-up errors throw. */
export async function runWorkerNode(
  config: EngineConfig,
  log: (line: string) => void,
  onProgress?: (p: EngineProgress) => void,
): Promise<number> {
  const model = await loadModelConfig(config.modelDir);
  const tpErr = tpError(model, config.tpSize);
  if (tpErr) throw new Error(tpErr);
  const tag = `node ${config.nodeRank} of ${config.nnodes}`;
  log(`${tag}: joining node 0 at ${config.distInitAddr}`);
  const { link, commId } = await joinNodes(config);
  const local = ranksPerNode(config), first = config.nodeRank * local;
  const rings = ringSizes(config, model.maxPositionEmbeddings);
  // Node 0 sends nothing until this node is ready; its link ending first means node 0 went
  // away, and the local ranks would wait for it in the communicator until they time out.
  const firstFrame = link.next().catch(() => null);
  const gone = new Error(`node 0 went away while ${tag} started`);
  let gpus: GpuWorker[];
  try {
    const abandon = firstFrame.then((f) =>
      f === null ? Promise.reject(gone) : new Promise<never>(() => {})
    );
    gpus = await startNodeWorkers(config, first, commId, rings, null, onProgress, abandon);
  } catch (e) {
    if (e !== gone) {
      await link.sendJson({ type: "failed", message: (e as Error).message }).catch(() => {});
    }
    link.close();
    throw e;
  }
  await link.sendJson({ type: "ready", infos: gpus.map((g) => g.info) });
  log(`${tag}: ranks ${first}..${first + local - 1} ready, serving node 0`);
  let failure: string | null = null;
  for (const [i, g] of gpus.entries()) {
    g.worker.onmessage = (ev: MessageEvent) => {
      if (ev.data?.type !== "fatal") return;
      failure ??= `GPU worker ${first + i}: ${ev.data.message}`;
      link.sendJson({ type: "failed", message: failure }).catch(() => {}).then(() => link.close());
    };
  }
  const to = gpus.map((g) => new Ring(g.to)), from = gpus.map((g) => new Ring(g.from));
  const drains = from.map(async (r) => {
    while (await r.popAsync() !== null) { /* node 0 keeps rank 0's results */ }
  });
  const shutdown = await relay(link, to, firstFrame);
  for (const r of [...to, ...from]) r.close();
  await Promise.all(drains);
  // The workers exit on the shutdown record; give them a moment to free memory.
  await new Promise((r) => setTimeout(r, 50));
  for (const g of gpus) g.worker.terminate();
  if (failure) log(`error: ${failure}`);
  else if (!shutdown) log(`error: node 0 went away; ${tag} exits`);
  else log(`${tag}: node 0 shut down`);
  return shutdown && !failure ? 0 : 1;
}

/** Copies records from the link (starting with `first`, already asked for) into every local
 *  ring until the link ends; true when node 0's shutdown record came through. */
async function relay(link: NodeLink, to: Ring[], first: Promise<Frame | null>): Promise<boolean> {
  let shutdown = false;
  try {
    for (let f = await first; f !== null; f = await link.next()) {
      if (f.kind !== "record") continue;
      for (const r of to) await r.pushAsync(f.words);
      if (recordKind(f.words) === KIND_SHUTDOWN) shutdown = true;
    }
  } catch {
    // A ring closed by a failed worker, or a broken link: the run is over either way.
  }
  link.close();
  return shutdown;
}
