/**
 * Tensor parallelism across hosts (--nnodes > 1), node 0's side and the rendezvous.
 *
 * Node 0 listens at --dist-init-addr; every other node connects, says its node rank and
 * the settings its workers would run with, and node 0 checks them against its own (same
 * config.json, tp, page size, ...: a mismatch stops both with one line). Once all have
 * joined, node 0 hands out the communicator's id (NCCL's unique id on CUDA; on the CPU an
 * id naming a TCP hub, see ffi/comm.ts) and every rank of every node joins it.
 *
 * After that the same connection carries batch records: node 0's scheduler pushes each
 * batch to one proxy ring per remote node, and a relay here sends the ring's records over
 * the link; the other node writes them into its own workers' rings (worker_node.ts). Ranks
 * run in lockstep through their collectives, so only node 0's results are read; the other
 * nodes drop theirs. A node that goes away ends the engine (and node 0 going away ends
 * every other node).
 */

import { join } from "node:path";
import { makeUniqueId, tcpUniqueId } from "../../ffi/comm.ts";
import { NodeLink, parseHostPort } from "../ipc/node_link.ts";
import { createRingBuffer, Ring } from "../ipc/ring.ts";
import type { WorkerInfo } from "../ipc/batch.ts";
import type { EngineConfig } from "./config.ts";

/** Bumped when the messages below change: nodes of different versions refuse each other. */
const PROTOCOL = 1;
/** How long a node keeps trying to reach node 0, and node 0 waits for a hello (ms). */
const CONNECT_TIMEOUT_MS = 300_000;
const HELLO_TIMEOUT_MS = 10_000;

type Settings = Record<string, string | number | null>;

/** What every node must agree on: the settings of its workers and config.json's hash (the
 *  model may sit at a different path on each host). */
export async function nodeSettings(c: EngineConfig): Promise<Settings> {
  const bytes = await Deno.readFile(join(c.modelDir, "config.json"));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return {
    protocol: PROTOCOL,
    configSha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
    device: c.device,
    tp: c.tpSize,
    nnodes: c.nnodes,
    pageSize: c.pageSize,
    numPages: c.numPages,
    memFraction: c.memFraction,
    maxRunningRequests: c.maxRunningRequests,
    maxPrefillLength: c.maxPrefillLength,
    cudaGraphMaxBs: c.cudaGraphMaxBs,
    dtype: c.dtype,
    kvCacheDtype: c.kvCacheDtype,
    attn: c.attn,
    dummyWeightSeed: c.dummyWeightSeed,
  };
}

/** One line naming every setting where `theirs` differs from node 0's, or null. */
export function settingsMismatch(
  nodeRank: number,
  mine: Settings,
  theirs: Settings,
): string | null {
  const diffs = Object.keys(mine)
    .filter((k) => mine[k] !== theirs[k])
    .map((k) => `${k} ${JSON.stringify(theirs[k] ?? null)} (node 0: ${JSON.stringify(mine[k])})`);
  return diffs.length ? `node ${nodeRank} does not match node 0: ${diffs.join(", ")}` : null;
}

function distAddr(c: EngineConfig): { host: string; port: number } {
  const a = c.distInitAddr === null ? null : parseHostPort(c.distInitAddr);
  if (!a) throw new Error(`--dist-init-addr must be HOST:PORT, got '${c.distInitAddr}'`);
  return a;
}

/** A free TCP port on `host` (for the CPU backend's hub: rank 0 binds it right after). */
function freePort(host: string): number {
  const l = Deno.listen({ hostname: host, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Node 0: waits for the other nnodes - 1 nodes at --dist-init-addr, checks their
 *  settings, and hands each the communicator id. Resolves with the links (index
 *  nodeRank - 1) and the id. */
export async function acceptNodes(
  c: EngineConfig,
  log: (line: string) => void,
): Promise<{ links: NodeLink[]; commId: Uint8Array }> {
  const { host, port } = distAddr(c);
  const mine = await nodeSettings(c);
  const listener = Deno.listen({ hostname: host, port, transport: "tcp" });
  log(`node 0 of ${c.nnodes}: waiting at ${host}:${port} for ${c.nnodes - 1} other node(s)`);
  const links: (NodeLink | undefined)[] = new Array(c.nnodes - 1);
  let refused: Error | null = null;
  try {
    while (links.filter((l) => l).length < c.nnodes - 1) {
      const link = new NodeLink(await listener.accept());
      const hello = await helloOf(link);
      if (!hello) {
        link.close(); // not a minisgl node, or silent: keep waiting
        continue;
      }
      const { nodeRank, settings } = hello;
      const why = nodeRank < 1 || nodeRank >= c.nnodes
        ? `node rank ${nodeRank} is not below --nnodes ${c.nnodes}`
        : links[nodeRank - 1]
        ? `two nodes say they are node ${nodeRank}`
        : settingsMismatch(nodeRank, mine, settings);
      if (why) {
        await link.sendJson({ type: "refused", message: why }).catch(() => {});
        link.close();
        refused = new Error(why);
        break;
      }
      links[nodeRank - 1] = link;
      log(`node ${nodeRank} joined from ${(link.conn.remoteAddr as Deno.NetAddr).hostname}`);
    }
  } finally {
    listener.close();
  }
  if (refused) {
    for (const l of links) l?.close();
    throw refused;
  }
  const commId = c.device === "cpu" ? tcpUniqueId(host, freePort(host)) : makeUniqueId(c.device);
  const joined = links as NodeLink[];
  await Promise.all(joined.map((l) => l.sendJson({ type: "welcome", commId: Array.from(commId) })));
  return { links: joined, commId };
}

/** The hello of a new connection, or null when it is not one (within HELLO_TIMEOUT_MS). */
async function helloOf(link: NodeLink): Promise<{ nodeRank: number; settings: Settings } | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<null>((r) => (timer = setTimeout(() => r(null), HELLO_TIMEOUT_MS)));
  try {
    const f = await Promise.race([link.next().catch(() => null), timeout]);
    if (f?.kind !== "json") return null;
    const m = f.value as { type?: string; nodeRank?: unknown; settings?: unknown };
    if (m.type !== "hello" || typeof m.nodeRank !== "number" || typeof m.settings !== "object") {
      return null;
    }
    return { nodeRank: m.nodeRank, settings: m.settings as Settings };
  } finally {
    clearTimeout(timer);
  }
}

/** Node k > 0: connects to node 0 (retrying while it starts), presents its settings and
 *  resolves with the link and the communicator id; throws node 0's refusal. */
export async function joinNodes(c: EngineConfig): Promise<{ link: NodeLink; commId: Uint8Array }> {
  const { host, port } = distAddr(c);
  const settings = await nodeSettings(c);
  const deadline = Date.now() + CONNECT_TIMEOUT_MS;
  let conn: Deno.TcpConn | null = null;
  while (!conn) {
    try {
      conn = await Deno.connect({ hostname: host, port });
    } catch (e) {
      if (Date.now() > deadline) {
        throw new Error(`cannot reach node 0 at ${host}:${port}: ${(e as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  const link = new NodeLink(conn);
  await link.sendJson({ type: "hello", nodeRank: c.nodeRank, settings });
  const f = await link.next();
  const m = f?.kind === "json"
    ? f.value as { type: string; message?: string; commId?: number[] }
    : null;
  if (m?.type === "welcome" && Array.isArray(m.commId)) {
    return { link, commId: Uint8Array.from(m.commId) };
  }
  link.close();
  if (m?.type === "refused") throw new Error(`node 0 refused this node: ${m.message}`);
  throw new Error("node 0 closed the connection during the rendezvous");
}

/** Node 0's view of the other nodes once they joined: one proxy ring each for the
 *  scheduler, relayed over the link; their readiness; their loss. */
export class RemoteNodes {
  /** Rings the scheduler pushes batches to, one per remote node (never popped by it). */
  readonly rings: SharedArrayBuffer[];
  #closing = false;
  #onLost: (reason: string) => void = () => {};
  #lost: string | null = null;
  #ready: Promise<WorkerInfo[]>;

  /** `ringBytes`: the size of the local workers' batch rings (records fit the same). */
  constructor(links: NodeLink[], ringBytes: number) {
    this.rings = links.map(() => createRingBuffer(ringBytes));
    this.#ready = Promise.all(links.map((l, i) => this.#watch(l, i + 1)))
      .then((all) => all.flat());
    this.#ready.catch(() => {}); // the engine may fail for another reason before it asks
    links.forEach((l, i) => this.#relay(new Ring(this.rings[i]), l));
  }

  /** Every remote worker's info, once all are ready; rejects with a node's failure. */
  ready(): Promise<WorkerInfo[]> {
    return this.#ready;
  }

  /** Called once, when a node fails or goes away (not after close()). */
  onLost(cb: (reason: string) => void): void {
    this.#onLost = cb;
    if (this.#lost !== null) cb(this.#lost);
  }

  /** Relays what is left in the rings, then closes the links. */
  close(): void {
    this.#closing = true;
    for (const b of this.rings) new Ring(b).close();
  }

  #lose(reason: string): void {
    if (this.#closing || this.#lost !== null) return;
    this.#lost = reason;
    this.#onLost(reason);
  }

  /** Reads the node's "ready" (resolves with its workers' infos), then waits for the
   *  link's end or a failure report. */
  #watch(link: NodeLink, nodeRank: number): Promise<WorkerInfo[]> {
    return new Promise((resolve, reject) => {
      let ready = false;
      (async () => {
        for (;;) {
          const f = await link.next().catch(() => null);
          const m = f?.kind === "json" ? f.value as { type: string; [k: string]: unknown } : null;
          if (m?.type === "ready" && !ready) {
            ready = true;
            resolve(m.infos as WorkerInfo[]);
            continue;
          }
          const reason = m?.type === "failed"
            ? `node ${nodeRank}: ${m.message}`
            : `node ${nodeRank} went away`;
          reject(new Error(reason));
          this.#lose(reason);
          link.close();
          return;
        }
      })();
    });
  }

  async #relay(ring: Ring, link: NodeLink): Promise<void> {
    try {
      for (;;) {
        const rec = await ring.popAsync();
        if (rec === null) break;
        await link.sendRecord(rec);
      }
    } catch (e) {
      this.#lose(`relay: ${(e as Error).message}`);
    }
    link.close();
  }
}
