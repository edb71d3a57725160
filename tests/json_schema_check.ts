/**
 * A small JSON Schema validator for the tests (the subset src/grammar compiles): it checks
 * generated output independently of the grammar code. Returns the first problem or null.
 */
type Json = Record<string, unknown>;

export function schemaProblem(v: unknown, s: unknown, root: Json = s as Json, path = "$"):
  | string
  | null {
  if (s === true || s === undefined) return null;
  const sc = s as Json;
  if (typeof sc.$ref === "string") {
    const name = sc.$ref.split("/").pop()!;
    const defs = (root.$defs ?? root.definitions) as Json;
    return schemaProblem(v, sc.$ref === "#" ? root : defs[name], root, path);
  }
  if ("const" in sc) {
    return JSON.stringify(v) === JSON.stringify(sc.const) ? null : `${path}: not the const`;
  }
  if (Array.isArray(sc.enum)) {
    return sc.enum.some((e) => JSON.stringify(e) === JSON.stringify(v))
      ? null
      : `${path}: ${JSON.stringify(v)} not in enum`;
  }
  const union = (sc.anyOf ?? sc.oneOf) as unknown[] | undefined;
  if (union) {
    return union.some((u) => schemaProblem(v, u, root, path) === null)
      ? null
      : `${path}: matches no anyOf branch`;
  }
  const type = sc.type ?? (sc.properties ? "object" : sc.items ? "array" : undefined);
  const kind = v === null
    ? "null"
    : Array.isArray(v)
    ? "array"
    : Number.isInteger(v)
    ? "integer"
    : typeof v;
  if (type !== undefined) {
    const ok = type === kind || (type === "number" && kind === "integer");
    if (!ok) return `${path}: ${kind} where ${type} is wanted`;
  }
  if (typeof v === "string") {
    const n = [...v].length;
    if (typeof sc.maxLength === "number" && n > sc.maxLength) return `${path}: too long`;
    if (typeof sc.minLength === "number" && n < sc.minLength) return `${path}: too short`;
    if (typeof sc.pattern === "string" && !new RegExp(`^(?:${sc.pattern})$`, "u").test(v)) {
      return `${path}: ${JSON.stringify(v)} does not match ${sc.pattern}`;
    }
  }
  if (typeof v === "number") {
    if (typeof sc.minimum === "number" && v < sc.minimum) return `${path}: below minimum`;
    if (typeof sc.maximum === "number" && v > sc.maximum) return `${path}: above maximum`;
    const xmin = sc.exclusiveMinimum, xmax = sc.exclusiveMaximum;
    if (typeof xmin === "number" && v <= xmin) return `${path}: not above exclusiveMinimum`;
    if (typeof xmax === "number" && v >= xmax) return `${path}: not below exclusiveMaximum`;
  }
  if (Array.isArray(v)) {
    if (typeof sc.minItems === "number" && v.length < sc.minItems) return `${path}: too few`;
    if (typeof sc.maxItems === "number" && v.length > sc.maxItems) return `${path}: too many`;
    for (let i = 0; i < v.length; i++) {
      const p = schemaProblem(v[i], sc.items, root, `${path}[${i}]`);
      if (p) return p;
    }
  }
  if (kind === "object") {
    const o = v as Json, props = (sc.properties ?? {}) as Json;
    for (const r of (sc.required ?? []) as string[]) {
      if (!(r in o)) return `${path}: missing ${r}`;
    }
    for (const [k, x] of Object.entries(o)) {
      if (!(k in props)) {
        if (sc.additionalProperties === false) return `${path}: extra property ${k}`;
        continue;
      }
      const p = schemaProblem(x, props[k], root, `${path}.${k}`);
      if (p) return p;
    }
  }
  return null;
}
