/**
 * The one place that calls Deno.dlopen: the symbol table of cuda/include/minisgl.h and
 * the loader of the native library (build/libminisgl_cpu.so or build/libminisgl_cuda.so).
 */

const P = "pointer" as const;
const I = "i32" as const;
const U64 = "u64" as const;
const F = "f32" as const;

/** The signature every extend-attention entry point shares (msg_attention_extend*). */
const EXTEND = {
  parameters: [P, P, I, P, P, P, I, P, P, P, I, I, I, I, I, I, I, I, F, I, P],
  result: I,
} as const;

/** Symbol table, in the header's order. Every function returns an i32 status (0 = ok). */
export const symbols = {
  msg_backend: { parameters: [], result: I },
  msg_last_error: { parameters: [], result: P },
  msg_device_count: { parameters: [P], result: I },
  msg_set_device: { parameters: [I], result: I },
  msg_device_name: { parameters: [I, P, I], result: I },
  msg_mem_info: { parameters: [P, P], result: I },
  msg_set_num_threads: { parameters: [I], result: I },

  msg_malloc: { parameters: [P, U64], result: I },
  msg_free: { parameters: [P], result: I },
  msg_host_alloc: { parameters: [P, U64], result: I },
  msg_host_free: { parameters: [P], result: I },
  msg_memcpy_h2d: { parameters: [P, P, U64, P], result: I },
  msg_memcpy_d2h: { parameters: [P, P, U64, P], result: I },
  msg_memcpy_d2d: { parameters: [P, P, U64, P], result: I },
  msg_memset: { parameters: [P, I, U64, P], result: I },

  msg_stream_create: { parameters: [P], result: I },
  msg_stream_destroy: { parameters: [P], result: I },
  msg_stream_sync: { parameters: [P], result: I },
  msg_device_sync: { parameters: [], result: I },
  msg_event_create: { parameters: [P], result: I },
  msg_event_destroy: { parameters: [P], result: I },
  msg_event_record: { parameters: [P, P], result: I },
  msg_event_sync: { parameters: [P], result: I },
  msg_event_query: { parameters: [P, P], result: I },
  msg_event_elapsed_ms: { parameters: [P, P, P], result: I },
  msg_stream_wait_event: { parameters: [P, P], result: I },
  msg_graph_begin: { parameters: [P], result: I },
  msg_graph_end: { parameters: [P, P], result: I },
  msg_graph_launch: { parameters: [P, P], result: I },
  msg_graph_destroy: { parameters: [P], result: I },

  msg_cast: { parameters: [P, I, P, I, U64, P], result: I },
  msg_embedding: { parameters: [P, P, P, I, I, I, I, P], result: I },
  msg_gather_rows: { parameters: [P, P, P, I, U64, P], result: I },
  msg_gather_i32: { parameters: [P, P, P, I, P], result: I },
  msg_scatter_i32: { parameters: [P, P, P, I, P], result: I },
  msg_add: { parameters: [P, P, P, U64, I, P], result: I },
  msg_rmsnorm: { parameters: [P, P, P, I, I, F, I, I, P], result: I },
  msg_add_rmsnorm: { parameters: [P, P, P, P, I, I, F, I, I, I, P], result: I },
  msg_silu_mul: { parameters: [P, P, I, I, I, P], result: I },
  msg_gemm: { parameters: [P, I, P, I, P, I, P, I, I, I, P], result: I },
  msg_gemm_silu: { parameters: [P, P, P, I, P, I, I, I, I, P], result: I },
  msg_gemv_max_m: { parameters: [I], result: I },
  msg_rope_store_kv: {
    parameters: [P, P, P, P, F, P, I, P, P, P, I, I, I, I, I, I, I, P],
    result: I,
  },
  msg_compute_slots: { parameters: [P, P, P, I, P, P, P, I, I, I, P], result: I },
  msg_attention_extend: EXTEND,
  msg_attention_has_hopper: { parameters: [P], result: I },
  msg_attention_extend_hopper_v5: EXTEND,
  msg_attention_extend_hopper_v6: EXTEND,
  msg_attention_decode: {
    parameters: [P, P, I, P, P, P, I, P, P, I, I, I, I, I, I, F, I, I, P],
    result: I,
  },
  msg_kv_widen_pages: {
    parameters: [P, P, P, P, P, I, P, P, I, I, I, I, I, I, I, P],
    result: I,
  },
  msg_sample: { parameters: [P, P, P, P, I, I, P], result: I },
  msg_uniform: { parameters: [U64, I], result: "f64" },
  msg_token_logprobs: { parameters: [P, P, P, I, I, P], result: I },
  msg_top_logprobs: { parameters: [P, P, P, I, I, I, P], result: I },
  msg_apply_penalties: { parameters: [P, I, P, P, P, P, P, I, P], result: I },
  msg_apply_token_mask: { parameters: [P, I, P, P, P, P, P, I, P], result: I },

  msg_comm_unique_id: { parameters: [P], result: I },
  msg_comm_init: { parameters: [P, I, I, P], result: I },
  msg_comm_destroy: { parameters: [P], result: I },
  msg_all_reduce: { parameters: [P, U64, I, P, P], result: I },
  msg_peer_buffer_alloc: { parameters: [P, U64, P], result: I },
  msg_peer_all_reduce_create: { parameters: [P, I, I, P, U64, P, P, P], result: I },
  msg_peer_all_reduce_destroy: { parameters: [P], result: I },
  msg_peer_all_reduce: { parameters: [P, U64, I, P, P], result: I },
  msg_all_gather_cols: { parameters: [P, I, P, P, I, I, I, P, P], result: I },
  msg_embedding_range: { parameters: [P, P, P, I, I, I, I, I, I, P], result: I },
  msg_fill_random: { parameters: [P, U64, I, U64, "f32", "f32", P], result: I },
} as const;

export type NativeSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** Which implementation of the ABI. */
export type Backend = "cpu" | "cuda";

/** The source tree's build folder (`deno task build` writes it). */
export const SOURCE_BUILD_DIR = new URL("../build", import.meta.url).pathname;

/** Path of the library of a backend: in $MINISGL_LIB_DIR when set (the server sets it to
 *  the folder it chose: next to the executable, the source tree's build/, or the cache),
 *  else in the source tree's build/. */
export function libraryPath(backend: Backend): string {
  const dir = Deno.env.get("MINISGL_LIB_DIR") || SOURCE_BUILD_DIR;
  return `${dir.replace(/\/$/, "")}/libminisgl_${backend}.so`;
}

/** A loaded native library with error-checked calls. */
export interface NativeLib {
  backend: Backend;
  sym: NativeSymbols;
  /** Throws NativeError with msg_last_error() when status != 0. */
  check(status: number, what: string): void;
  close(): void;
}

/** A failed native call. */
export class NativeError extends Error {}

/** Loads the library of `backend`; throws a one-line Error when it is missing or broken. */
export function loadNative(backend: Backend): NativeLib {
  const path = libraryPath(backend);
  let lib: Deno.DynamicLibrary<typeof symbols>;
  try {
    lib = Deno.dlopen(path, symbols);
  } catch (e) {
    throw new Error(`cannot load ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  const sym = lib.symbols;
  return {
    backend,
    sym,
    check(status: number, what: string) {
      if (status !== 0) {
        const p = sym.msg_last_error();
        const msg = p ? new Deno.UnsafePointerView(p).getCString() : "";
        throw new NativeError(`${what} failed (${status}): ${msg}`);
      }
    },
    close() {
      lib.close();
    },
  };
}
