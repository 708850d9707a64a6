// The OpenAI Node SDK against the gateway: one streamed tool call and one strict
// json_schema request. Needs TENZRO_BASE_URL (…/v1), TENZRO_API_KEY and
// TENZRO_MODEL; exits non-zero with the reason on any failure. Run by
// tests/python/test_tools.py (`npm ci` first).
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.TENZRO_BASE_URL,
  apiKey: process.env.TENZRO_API_KEY,
  maxRetries: 0,
  timeout: 300_000,
});
const model = process.env.TENZRO_MODEL;

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The current weather in a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 20 } },
      required: ["city"],
      additionalProperties: false,
    },
    strict: true,
  },
};

async function streamedToolCall() {
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "What is the weather in Paris?" }],
    tools: [weather],
    tool_choice: "required",
    parallel_tool_calls: false,
    temperature: 0,
    max_tokens: 64,
    stream: true,
  });
  const calls = [];
  let finish = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      for (const d of choice.delta.tool_calls ?? []) {
        calls[d.index] ??= { id: "", name: "", arguments: "" };
        if (d.id) calls[d.index].id = d.id;
        if (d.function?.name) calls[d.index].name += d.function.name;
        if (d.function?.arguments) calls[d.index].arguments += d.function.arguments;
      }
      finish = choice.finish_reason ?? finish;
    }
  }
  assert.equal(finish, "tool_calls");
  assert.equal(calls.length, 1);
  assert.match(calls[0].id, /^call_/);
  assert.equal(calls[0].name, "get_weather");
  const args = JSON.parse(calls[0].arguments);
  assert.equal(typeof args.city, "string");
  assert.deepEqual(Object.keys(args), ["city"]);
  return calls[0];
}

async function jsonSchema() {
  const schema = {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 20 },
      age: { type: "integer", minimum: 0, maximum: 150 },
    },
    required: ["name", "age"],
    additionalProperties: false,
  };
  const r = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Describe a person as JSON." }],
    response_format: { type: "json_schema", json_schema: { name: "person", schema, strict: true } },
    temperature: 0,
    max_tokens: 64,
  });
  const choice = r.choices[0];
  assert.equal(choice.finish_reason, "stop");
  const person = JSON.parse(choice.message.content);
  assert.equal(typeof person.name, "string");
  assert.ok(Number.isInteger(person.age) && person.age >= 0 && person.age <= 150);
  assert.deepEqual(Object.keys(person).sort(), ["age", "name"]);
  return person;
}

const call = await streamedToolCall();
const person = await jsonSchema();
console.log(JSON.stringify({ call, person }));
