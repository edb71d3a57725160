/** The nested JSON schema of the structured-output benchmarks (bench/structured.ts on the
 *  engine, bench/structured_masks.ts on the CPU): objects in objects, an array of objects,
 *  bounded strings, integer ranges, a pattern. */
export const PERSON_SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 40 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    email: { type: "string", pattern: "[a-z0-9.]{1,20}@[a-z0-9]{1,15}\\.(com|org|net)" },
    address: {
      type: "object",
      properties: {
        street: { type: "string", maxLength: 60 },
        city: { type: "string", maxLength: 40 },
        zip: { type: "string", pattern: "[0-9]{5}" },
      },
      required: ["street", "city", "zip"],
      additionalProperties: false,
    },
    friends: {
      type: "array",
      maxItems: 4,
      items: {
        type: "object",
        properties: {
          name: { type: "string", maxLength: 40 },
          since: { type: "integer", minimum: 1900, maximum: 2030 },
        },
        required: ["name", "since"],
        additionalProperties: false,
      },
    },
    tags: { type: "array", items: { type: "string", maxLength: 20 }, maxItems: 6 },
    active: { type: "boolean" },
  },
  required: ["name", "age", "email", "address", "friends", "tags", "active"],
  additionalProperties: false,
};
