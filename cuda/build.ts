/**
 * Builds the native libraries of minisgl.
 *
 *   deno run -A cuda/build.ts               CPU library; CUDA library too when nvcc and
 *                                           cuBLASLt are present
 *   deno run -A cuda/build.ts --force       rebuild everything
 *   deno run -A cuda/build.ts --check-cuda  compile every cuda/src/*.cu (no link) for
 *                                           sm_90a and sm_80; "nvcc not found, skipped"
 *                                           without nvcc
 *
 * Outputs: build/libminisgl_cpu.so (g++) and build/libminisgl_cuda.so (nvcc). Objects are
 * compiled in parallel and only when a source or header is newer than them; every output
 * is written to a temporary name and renamed, so concurrent builds (parallel tests) never
 * load a half-written library.
 */
import { parseArgs } from "node:util";

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const cpuDir = `${root}/cuda/cpu`;
const srcDir = `${root}/cuda/src`;
const includeDir = `${root}/cuda/include`;
const buildDir = `${root}/build`;

const CXX_FLAGS = [
  "-O3",
  "-march=native",
  "-fPIC",
  "-pthread",
  "-std=c++17",
  // FMA contraction only makes fp32 dot products more exact; no -ffast-math anywhere.
  "-ffp-contract=fast",
  "-fno-math-errno",
  "-fvisibility=hidden",
];
/** The architectures every build supports; --check-cuda always compiles for all of them. */
const NVCC_ARCH = [
  "-gencode",
  "arch=compute_90a,code=sm_90a",
  "-gencode",
  "arch=compute_80,code=sm_80",
];
/** What the library is built for: $MINISGL_CUDA_ARCHS (e.g. "90a" on an H100/H200, which
 *  halves the build time of the GPU machine's run), else NVCC_ARCH. */
function buildArch(): string[] {
  const want = Deno.env.get("MINISGL_CUDA_ARCHS");
  if (!want) return NVCC_ARCH;
  return want.split(",").flatMap((a) => ["-gencode", `arch=compute_${a},code=sm_${a}`]);
}
const NVCC_FLAGS = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", `-I${includeDir}`];

/** A failed compiler run; `output` is what the compiler printed. */
export class BuildError extends Error {
  constructor(message: string, readonly output: string) {
    super(message);
  }
}

/** What ensureBuilt produced: paths of the libraries that exist after the call. */
export interface BuildResult {
  cpu: string;
  /** Null when CUDA was not asked for or its toolchain is missing. */
  cuda: string | null;
}

/** Options of ensureBuilt. */
export interface BuildOptions {
  /** Also build the CUDA library when nvcc and cuBLASLt are available. Default false. */
  cuda?: boolean;
  /** Rebuild even when the outputs are up to date. */
  force?: boolean;
  /** Print one line per thing built. Default false. */
  verbose?: boolean;
  /** Output folder (libraries and objects). Default: the source tree's build/. */
  dir?: string;
}

function mtime(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

function listFiles(dir: string, exts: string[]): string[] {
  try {
    return [...Deno.readDirSync(dir)]
      .filter((e) => e.isFile && exts.some((x) => e.name.endsWith(x)))
      .map((e) => `${dir}/${e.name}`)
      .sort();
  } catch {
    return [];
  }
}

/** Runs a command; throws BuildError with its output when it fails. */
async function run(cmd: string, args: string[], what: string): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new BuildError(`${what}: cannot run ${cmd}`, (e as Error).message);
  }
  if (!out.success) {
    const dec = new TextDecoder();
    throw new BuildError(`${what} failed`, dec.decode(out.stdout) + dec.decode(out.stderr));
  }
}

/** Runs jobs with at most `limit` at a time; rejects with the first failure. */
async function pool<T>(items: T[], limit: number, job: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await job(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
}

function unique(path: string): string {
  return `${path}.tmp${Deno.pid}.${Math.random().toString(36).slice(2, 8)}`;
}

/** Compiles `sources` to objects in objDir (when stale) and links them into `out`. */
async function buildLibrary(opts: {
  name: string;
  sources: string[];
  headers: string[];
  out: string;
  objDir: string;
  compile: (src: string, obj: string) => [string, string[]];
  link: (objs: string[], out: string) => [string, string[]];
  force: boolean;
  verbose: boolean;
}): Promise<boolean> {
  const newestHeader = Math.max(0, ...opts.headers.map(mtime));
  Deno.mkdirSync(opts.objDir, { recursive: true });
  const objs = opts.sources.map((s) => `${opts.objDir}/${s.split("/").pop()}.o`);
  const stale = opts.sources.filter((s, i) => {
    const t = mtime(objs[i]);
    return opts.force || t === 0 || t < mtime(s) || t < newestHeader;
  });
  const outTime = mtime(opts.out);
  if (stale.length === 0 && outTime > 0 && objs.every((o) => mtime(o) <= outTime)) return false;
  await pool(stale, navigator.hardwareConcurrency || 1, async (src) => {
    const obj = objs[opts.sources.indexOf(src)];
    const tmp = unique(obj);
    const [cmd, args] = opts.compile(src, tmp);
    try {
      await run(cmd, args, `compile ${src.slice(root.length + 1)}`);
      Deno.renameSync(tmp, obj);
    } finally {
      try {
        Deno.removeSync(tmp);
      } catch { /* renamed */ }
    }
  });
  const tmp = unique(opts.out);
  const [cmd, args] = opts.link(objs, tmp);
  await run(cmd, args, `link ${opts.name}`);
  Deno.renameSync(tmp, opts.out);
  if (opts.verbose) {
    console.log(`built ${opts.out.startsWith(root) ? opts.out.slice(root.length + 1) : opts.out}`);
  }
  return true;
}

/** Absolute path of an executable on PATH, or null. */
export function which(exe: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      const st = Deno.statSync(`${dir}/${exe}`);
      if (st.isFile) return `${dir}/${exe}`;
    } catch { /* not here */ }
  }
  return null;
}

/** True when libcublasLt is installed where the CUDA build expects to find it at run time. */
export function hasCublasLt(): boolean {
  const dirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"];
  const home = Deno.env.get("CUDA_HOME");
  if (home) dirs.push(`${home}/lib64`);
  for (const d of dirs) {
    try {
      if ([...Deno.readDirSync(d)].some((e) => e.name.startsWith("libcublasLt.so"))) return true;
    } catch { /* no such dir */ }
  }
  try {
    const out = new Deno.Command("ldconfig", { args: ["-p"], stdout: "piped", stderr: "null" })
      .outputSync();
    return new TextDecoder().decode(out.stdout).includes("libcublasLt.so");
  } catch {
    return false;
  }
}

/** Folders that hold libcudart, for the CUDA library's rpath: Deno.dlopen then finds the
 *  runtime even where the CUDA folder is not in the loader's cache. */
function cudaLibDirs(): string[] {
  const homes = [Deno.env.get("CUDA_HOME"), "/usr/local/cuda"].filter((h): h is string => !!h);
  const dirs = homes.flatMap((h) => [`${h}/lib64`, `${h}/lib`, `${h}/targets/x86_64-linux/lib`]);
  return [...new Set(dirs)].filter((d) => {
    try {
      return [...Deno.readDirSync(d)].some((e) => e.name.startsWith("libcudart.so"));
    } catch {
      return false;
    }
  });
}

function buildCpu(dir: string, force: boolean, verbose: boolean): Promise<boolean> {
  return buildLibrary({
    name: "libminisgl_cpu.so",
    sources: listFiles(cpuDir, [".cpp"]),
    headers: [...listFiles(cpuDir, [".h"]), ...listFiles(includeDir, [".h"])],
    out: `${dir}/libminisgl_cpu.so`,
    objDir: `${dir}/obj/cpu`,
    compile: (src, obj) => ["g++", [...CXX_FLAGS, `-I${includeDir}`, "-c", src, "-o", obj]],
    link: (objs, out) => ["g++", ["-shared", "-pthread", "-o", out, ...objs]],
    force,
    verbose,
  });
}

function buildCuda(dir: string, force: boolean, verbose: boolean): Promise<boolean> {
  return buildLibrary({
    name: "libminisgl_cuda.so",
    sources: listFiles(srcDir, [".cu"]),
    headers: [
      ...listFiles(srcDir, [".h", ".cuh"]),
      ...listFiles(includeDir, [".h"]),
    ],
    out: `${dir}/libminisgl_cuda.so`,
    objDir: `${dir}/obj/cuda`,
    compile: (src, obj) => ["nvcc", [...NVCC_FLAGS, ...buildArch(), "-c", src, "-o", obj]],
    link: (objs, out) => [
      "nvcc",
      [
        "-shared",
        ...buildArch(),
        "-o",
        out,
        ...objs,
        ...cudaLibDirs().flatMap((d) => [`-L${d}`, "-Xlinker", `-rpath=${d}`]),
        "-lcudart",
        "-ldl",
      ],
    ],
    force,
    verbose,
  });
}

/** Builds whatever of the native libraries is missing or out of date; returns their paths.
 *  Throws BuildError (with the compiler's output) when a compiler fails. */
export async function ensureBuilt(opts: BuildOptions = {}): Promise<BuildResult> {
  const dir = opts.dir ?? buildDir;
  Deno.mkdirSync(dir, { recursive: true });
  const force = opts.force ?? false, verbose = opts.verbose ?? false;
  await buildCpu(dir, force, verbose);
  let cuda: string | null = null;
  if (opts.cuda && which("nvcc") && hasCublasLt() && listFiles(srcDir, [".cu"]).length > 0) {
    await buildCuda(dir, force, verbose);
    cuda = `${dir}/libminisgl_cuda.so`;
  }
  return { cpu: `${dir}/libminisgl_cpu.so`, cuda };
}

/** Compiles every cuda/src/*.cu for both architectures without linking. Returns the number
 *  of files checked, or -1 when nvcc is missing. */
export async function checkCuda(verbose = true): Promise<number> {
  if (!which("nvcc")) return -1;
  const sources = listFiles(srcDir, [".cu"]);
  const tmp = Deno.makeTempDirSync({ prefix: "minisgl-check-cuda-" });
  try {
    await pool(sources, navigator.hardwareConcurrency || 1, async (src) => {
      const obj = `${tmp}/${src.split("/").pop()}.o`;
      await run("nvcc", [...NVCC_FLAGS, ...NVCC_ARCH, "-c", src, "-o", obj], `nvcc ${src}`);
      if (verbose) console.log(`checked ${src.slice(root.length + 1)}`);
    });
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
  return sources.length;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      force: { type: "boolean", default: false },
      "check-cuda": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log("usage: deno run -A cuda/build.ts [--force] [--check-cuda]");
    return;
  }
  try {
    if (values["check-cuda"]) {
      const n = await checkCuda();
      console.log(n < 0 ? "nvcc not found, skipped" : `${n} CUDA source(s) compile`);
      return;
    }
    const force = values.force;
    const builtCpu = await buildCpu(buildDir, force, true);
    if (!builtCpu) console.log("build/libminisgl_cpu.so is up to date");
    if (!which("nvcc")) {
      console.log("nvcc not found: CUDA library skipped");
    } else if (!hasCublasLt()) {
      console.log("libcublasLt not found: CUDA library skipped");
    } else if (listFiles(srcDir, [".cu"]).length === 0) {
      console.log("no cuda/src/*.cu: CUDA library skipped");
    } else if (!(await buildCuda(buildDir, force, true))) {
      console.log("build/libminisgl_cuda.so is up to date");
    }
  } catch (e) {
    if (e instanceof BuildError) {
      console.error(`error: ${e.message}\n${e.output}`);
      Deno.exit(1);
    }
    throw e;
  }
}

if (import.meta.main) await main();
