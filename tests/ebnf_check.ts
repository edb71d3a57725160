/**
 * Independent checkers for the EBNF grammars of the tests (recursive descent, written
 * from the grammar text, sharing nothing with src/grammar).
 */

/** The arithmetic grammar of the tests, and whether `s` is in its language. */
export const ARITH_EBNF = `# arithmetic, recursive through factor
root   ::= expr
expr   ::= term (("+" | "-") term){0,3}
term   ::= factor (("*" | "/") factor){0,2}
factor ::= number | "(" expr ")"
number ::= [0-9]{1,3}
`;

export function isArith(s: string): boolean {
  let i = 0;
  const number = () => {
    let n = 0;
    while (n < 3 && s[i] >= "0" && s[i] <= "9") (i++, n++);
    return n > 0;
  };
  const factor = (): boolean => {
    if (s[i] === "(") {
      i++;
      if (!expr() || s[i] !== ")") return false;
      i++;
      return true;
    }
    return number();
  };
  const term = (): boolean => {
    if (!factor()) return false;
    for (let k = 0; k < 2 && (s[i] === "*" || s[i] === "/"); k++) {
      i++;
      if (!factor()) return false;
    }
    return true;
  };
  const expr = (): boolean => {
    if (!term()) return false;
    for (let k = 0; k < 3 && (s[i] === "+" || s[i] === "-"); k++) {
      i++;
      if (!term()) return false;
    }
    return true;
  };
  return expr() && i === s.length;
}

/** A recursive list grammar (JSON arrays of small integers and lists), checked by
 *  JSON.parse plus a shape check. */
export const LIST_EBNF = `
root  ::= list
list  ::= "[" ( item ( ", " item ){0,2} )? "]"
item  ::= int | list | 'true'
int   ::= "-"? [1-9] [0-9]?
`;

export function isList(s: string): boolean {
  let v: unknown;
  try {
    v = JSON.parse(s);
  } catch {
    return false;
  }
  const ok = (x: unknown): boolean =>
    Array.isArray(x)
      ? x.length <= 3 && x.every(ok)
      : x === true || (Number.isInteger(x) && Math.abs(x as number) >= 1 &&
        Math.abs(x as number) <= 99);
  return Array.isArray(v) && ok(v) && JSON.stringify(v).replaceAll(",", ", ") === s;
}
