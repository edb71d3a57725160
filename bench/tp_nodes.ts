/**
 * The two-process socket run of issue 9 (run by scripts/device_tp.sh on a two-GPU machine;
 * --device cpu with a tiny model checks the script itself): `--tp 2 --nnodes 2` as two
 * server processes on this host, one GPU each (CUDA_VISIBLE_DEVICES), NCCL forced onto
 * sockets (NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1), against one process
 * with `--tp 2`. Both answer the same greedy completions with the prompt's logprobs (echo)
 * and the completion's; the record says whether they are equal, bit for bit.
 *
 *   deno run -A bench/tp_nodes.ts --model DIR --name llama-3-8b [--device cuda] [--tokens 64]
 *     {"name":"tp_two_process_socket","model","equal","text_equal","max_abs_diff","positions"}
 */
import { parseArgs } from "node:util";
import { appendResult } from "./results.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    name: { type: "string" },
    device: { type: "string", default: "cuda" },
    tokens: { type: "string", default: "64" },
    card: { type: "string", default: "unknown card" },
    out: { type: "string", default: "bench/results/tp_nodes.json" },
  },
});
if (!a.model || !a.name) throw new Error("--model and --name are required");
const main = new URL("../main.ts", import.meta.url).pathname;
const cpu = a.device === "cpu";
const common = ["--model", a.model, "--device", a.device!, "--port", "0", "--page-size", "16"];
if (cpu) common.push("--cpu-threads", "1");
// Both nodes are on this host: loopback is the one interface certain to join them.
const SOCKETS = {
  NCCL_P2P_DISABLE: "1",
  NCCL_SHM_DISABLE: "1",
  NCCL_IB_DISABLE: "1",
  NCCL_SOCKET_IFNAME: Deno.env.get("NCCL_SOCKET_IFNAME") ?? "lo",
};

/** `deno run main.ts FLAGS`; resolves with its URL once it listens (node 0, one process)
 *  or at once (node 1); kill() ends it. Logs go to this process's stderr. */
async function spawn(flags: string[], env: Record<string, string>, listens: boolean) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...common, ...flags],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (listens && !/listening on (\S+)/.test(out)) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`server exited before listening (${flags.join(" ")})`);
    out += value;
  }
  const drained = (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  return {
    url: out.match(/listening on (\S+)/)?.[1] ?? "",
    async stop(): Promise<number> {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
      const s = await child.status;
      clearTimeout(timer);
      await drained;
      return s.code;
    },
  };
}

interface Choice {
  text: string;
  logprobs: { token_logprobs: (number | null)[] };
}

const PROMPTS = [
  "The history of tensor parallelism begins with",
  Array.from({ length: 300 }, (_, i) => `${i}`).join(" "),
];

async function answers(url: string): Promise<Choice[]> {
  const out: Choice[] = [];
  for (const prompt of PROMPTS) {
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        prompt,
        max_tokens: Number(a.tokens),
        temperature: 0,
        ignore_eos: true,
        echo: true,
        logprobs: 1,
      }),
      signal: AbortSignal.timeout(120_000),
    });
    const body = await res.json();
    if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
    out.push(body.choices[0]);
  }
  return out;
}

const port = (() => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
})();
const nodeFlags = (k: number) => [
  ...["--tp", "2", "--nnodes", "2", "--node-rank", String(k)],
  ...["--dist-init-addr", `127.0.0.1:${port}`],
];
const gpu = (k: number): Record<string, string> => cpu ? {} : { CUDA_VISIBLE_DEVICES: String(k) };
const node1 = await spawn(nodeFlags(1), { ...SOCKETS, ...gpu(1) }, false);
const node0 = await spawn(nodeFlags(0), { ...SOCKETS, ...gpu(0) }, true);
const two = await answers(node0.url).finally(() => node0.stop());
const node1Code = await node1.stop();
const one = await spawn(["--tp", "2"], {}, true);
const ref = await answers(one.url).finally(() => one.stop());

let maxDiff = 0, positions = 0;
for (const [i, c] of two.entries()) {
  const x = c.logprobs.token_logprobs, y = ref[i].logprobs.token_logprobs;
  for (let j = 0; j < Math.min(x.length, y.length); j++) {
    if (x[j] === null || y[j] === null) continue;
    maxDiff = Math.max(maxDiff, Math.abs(x[j]! - y[j]!));
    positions++;
  }
}
const record = {
  name: "tp_two_process_socket",
  model: a.name,
  equal: JSON.stringify(two) === JSON.stringify(ref),
  text_equal: two.every((c, i) => c.text === ref[i].text),
  max_abs_diff: maxDiff,
  positions,
  node1_exit: node1Code,
};
console.log(JSON.stringify(record));
await appendResult(a.out!, a.card!, record);
