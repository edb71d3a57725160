/**
 * Structured-output fields of a request body: OpenAI's `response_format` (json_schema,
 * json_object, text), SGLang's `regex`, `json_schema` and `ebnf` (top level on the OpenAI
 * routes, in `sampling_params` on /generate), and `logit_bias`. A grammar that does not
 * compile is a 400 naming the field and the problem. EBNF: the GBNF subset of
 * grammar/ebnf.ts, recursive rules as calls of a pushdown automaton.
 */
import type { SamplingParams } from "../engine/types.ts";
import { GrammarError, specToRegex } from "../grammar/grammar.ts";
import { badParam } from "./errors.ts";

type Json = Record<string, unknown>;
type Constraint = NonNullable<SamplingParams["constraint"]>;

/** Compiles a constraint far enough to reject a bad one (the worker compiles it again into
 *  its automaton, cached per source). */
function checked(c: Constraint, param: string): Constraint {
  try {
    specToRegex(c);
  } catch (e) {
    if (e instanceof GrammarError) throw badParam(param, `Invalid '${param}': ${e.message}`);
    throw e;
  }
  return c;
}

function schemaSource(v: unknown, param: string): string {
  if (typeof v === "string") {
    try {
      JSON.parse(v);
    } catch (e) {
      throw badParam(param, `Invalid '${param}': not JSON (${(e as Error).message}).`);
    }
    return v;
  }
  if (typeof v === "boolean" || (v !== null && typeof v === "object" && !Array.isArray(v))) {
    return JSON.stringify(v);
  }
  throw badParam(param, `Invalid type for '${param}': expected a JSON Schema object.`);
}

/** The constraint of a body (OpenAI route: `response_format`, `regex`, `json_schema`,
 *  `ebnf`; /generate: pass `sampling_params` and prefix "sampling_params."), or null. */
export function readConstraint(body: Json, prefix = ""): Constraint | null {
  const found: Constraint[] = [];
  const rf = body.response_format;
  if (rf !== undefined && rf !== null) {
    const p = `${prefix}response_format`;
    if (typeof rf !== "object" || Array.isArray(rf)) {
      throw badParam(p, `Invalid type for '${p}': expected an object.`);
    }
    const type = (rf as Json).type;
    if (type === "json_object") found.push({ kind: "json_object", source: "" });
    else if (type === "json_schema") {
      const js = (rf as Json).json_schema;
      if (js === null || typeof js !== "object" || Array.isArray(js)) {
        throw badParam(`${p}.json_schema`, `Missing required parameter: '${p}.json_schema'.`);
      }
      const schema = (js as Json).schema ?? {};
      found.push(checked(
        { kind: "json_schema", source: schemaSource(schema, `${p}.json_schema.schema`) },
        `${p}.json_schema.schema`,
      ));
    } else if (type !== "text") {
      throw badParam(
        `${p}.type`,
        `Invalid value for '${p}.type': ${JSON.stringify(type)}. ` +
          "Supported values are 'text', 'json_object' and 'json_schema'.",
      );
    }
  }
  if (body.regex !== undefined && body.regex !== null) {
    const p = `${prefix}regex`;
    if (typeof body.regex !== "string") {
      throw badParam(p, `Invalid type for '${p}': expected a string.`);
    }
    found.push(checked({ kind: "regex", source: body.regex }, p));
  }
  if (body.json_schema !== undefined && body.json_schema !== null) {
    const p = `${prefix}json_schema`;
    found.push(checked({ kind: "json_schema", source: schemaSource(body.json_schema, p) }, p));
  }
  if (body.ebnf !== undefined && body.ebnf !== null) {
    const p = `${prefix}ebnf`;
    if (typeof body.ebnf !== "string") {
      throw badParam(p, `Invalid type for '${p}': expected a string (an EBNF grammar).`);
    }
    found.push(checked({ kind: "ebnf", source: body.ebnf }, p));
  }
  if (found.length > 1) {
    throw badParam(
      `${prefix}regex`,
      "Only one of 'response_format' (json), 'regex', 'json_schema' and 'ebnf' may be set.",
    );
  }
  return found[0] ?? null;
}

/** OpenAI's `logit_bias`: {"token id": bias in -100..100}, or null when absent. */
export function readLogitBias(v: unknown, vocabSize: number, param = "logit_bias") {
  if (v === undefined || v === null) return null;
  if (typeof v !== "object" || Array.isArray(v)) {
    throw badParam(param, `Invalid type for '${param}': expected an object of token id -> bias.`);
  }
  const out: [number, number][] = [];
  for (const [k, b] of Object.entries(v as Json)) {
    const id = Number(k);
    if (!/^\d+$/.test(k) || id >= vocabSize) {
      throw badParam(
        param,
        `Invalid key in '${param}': ${JSON.stringify(k)} is not a token id ` +
          `in [0, ${vocabSize}).`,
      );
    }
    if (typeof b !== "number" || !(b >= -100 && b <= 100)) {
      throw badParam(
        param,
        `Invalid value in '${param}' for token ${k}: expected a number in ` +
          "[-100, 100].",
      );
    }
    out.push([id, b]);
  }
  return out.length ? out : null;
}

/** Sets `constraint` and `logitBias` of `sampling` from an OpenAI body. */
export function readStructured(body: Json, sampling: Partial<SamplingParams>, vocabSize: number) {
  const c = readConstraint(body);
  if (c) sampling.constraint = c;
  const lb = readLogitBias(body.logit_bias, vocabSize);
  if (lb) sampling.logitBias = lb;
}
