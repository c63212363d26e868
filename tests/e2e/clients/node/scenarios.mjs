// The official OpenAI Node SDK against a live Tollgate gateway, one scenario per run:
//   node scenarios.mjs SCENARIO < config.json
// config: {baseURL, apiKey, model, tool, schema, toolOutput}. Prints one JSON object on stdout
// for the pytest test to assert on; an unexpected error exits 1 with the error on stderr.
import OpenAI from 'openai';

const QUESTION = [{ role: 'user', content: 'What is the weather in Paris?' }];

// What a test needs to know of an error the SDK raised: its class and the envelope's fields.
function describeError(error) {
  return {
    class: error.constructor.name,
    isAPIError: error instanceof OpenAI.APIError,
    isNotFound: error instanceof OpenAI.NotFoundError,
    isBadRequest: error instanceof OpenAI.BadRequestError,
    isAuthentication: error instanceof OpenAI.AuthenticationError,
    status: error.status ?? null,
    code: error.code ?? null,
    type: error.type ?? null,
    param: error.param ?? null,
    message: error.message,
    requestID: error.requestID ?? null,
  };
}

// A streamed event's response has no `output_text` (only `create` and the helper add it).
function outputText(response) {
  return response.output
    .flatMap((item) => (item.type === 'message' ? item.content : []))
    .map((part) => (part.type === 'output_text' ? part.text : ''))
    .join('');
}

async function caught(promise) {
  try {
    await promise;
  } catch (error) {
    return describeError(error);
  }
  return null;
}

// The tool's answer goes back as the SDK's own assistant message plus a `tool` message.
function withToolResult(messages, assistant, config) {
  return [
    ...messages,
    assistant,
    ...assistant.tool_calls.map((call) => ({
      role: 'tool',
      tool_call_id: call.id,
      content: config.toolOutput,
    })),
  ];
}

const scenarios = {
  async chat(client, config) {
    const completion = await client.chat.completions.create({
      model: config.model,
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: [{ type: 'text', text: 'Hi' }] },
      ],
      max_completion_tokens: 16,
    });
    const choice = completion.choices[0];
    return {
      object: completion.object,
      model: completion.model,
      role: choice.message.role,
      content: choice.message.content,
      finish_reason: choice.finish_reason,
      usage: completion.usage,
    };
  },

  async chat_stream(client, config) {
    const stream = await client.chat.completions.create({
      model: config.model,
      messages: [{ role: 'user', content: 'Hi' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const withChoices = chunks.filter((c) => c.choices.length > 0);
    const last = chunks[chunks.length - 1];
    return {
      chunks: chunks.length,
      first_role: withChoices[0].choices[0].delta.role ?? null,
      content: withChoices.map((c) => c.choices[0].delta.content ?? '').join(''),
      finish_reasons: withChoices.map((c) => c.choices[0].finish_reason).filter(Boolean),
      usage_only_in_last: chunks.slice(0, -1).every((c) => !c.usage),
      last_choices: last.choices.length,
      usage: last.usage ?? null,
    };
  },

  async completion(client, config) {
    const completion = await client.completions.create({
      model: config.model,
      prompt: 'Say hi',
      max_tokens: 4,
    });
    return {
      object: completion.object,
      text: completion.choices[0].text,
      finish_reason: completion.choices[0].finish_reason,
      usage: completion.usage,
    };
  },

  async models(client, config) {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);
    const one = await client.models.retrieve(config.model);
    return { ids, retrieved: one.id, object: one.object };
  },

  async errors(client, config) {
    return {
      unknown_model: await caught(
        client.chat.completions.create({ model: 'no-such-model', messages: QUESTION }),
      ),
      unknown_model_streamed: await caught(
        client.chat.completions.create({ model: 'no-such-model', messages: QUESTION, stream: true }),
      ),
      unknown_model_card: await caught(client.models.retrieve('no-such-model')),
      bad_temperature: await caught(
        client.chat.completions.create({ model: config.model, messages: QUESTION, temperature: 9 }),
      ),
      bad_key: await caught(
        new OpenAI({ baseURL: config.baseURL, apiKey: 'tg-nope', maxRetries: 0 }).models.list(),
      ),
    };
  },

  async responses(client, config) {
    const response = await client.responses.create({
      model: config.model,
      instructions: 'Be brief.',
      input: 'Hi',
    });
    return {
      id: response.id,
      object: response.object,
      status: response.status,
      output_text: response.output_text,
      output_types: response.output.map((item) => item.type),
      usage: response.usage,
    };
  },

  async responses_stream(client, config) {
    const stream = await client.responses.create({ model: config.model, input: 'Hi', stream: true });
    const events = [];
    for await (const event of stream) events.push(event);
    const completed = events[events.length - 1];
    // The SDK's helper, which assembles the final response from the events itself.
    const helper = client.responses.stream({ model: config.model, input: 'Hi' });
    const helperDeltas = [];
    helper.on('response.output_text.delta', (event) => helperDeltas.push(event.delta));
    const final = await helper.finalResponse();
    return {
      types: events.map((e) => e.type),
      sequence: events.map((e) => e.sequence_number),
      deltas: events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta),
      completed_text: outputText(completed.response),
      completed_usage: completed.response.usage,
      same_id: events[0].response.id === completed.response.id,
      helper_deltas: helperDeltas,
      helper_text: final.output_text,
      helper_status: final.status,
    };
  },

  async tools(client, config) {
    const first = await client.chat.completions.create({
      model: config.model,
      messages: QUESTION,
      tools: [config.tool],
      tool_choice: 'auto',
    });
    const assistant = first.choices[0].message;
    const second = await client.chat.completions.create({
      model: config.model,
      messages: withToolResult(QUESTION, assistant, config),
      tools: [config.tool],
    });
    return {
      finish_reason: first.choices[0].finish_reason,
      content: assistant.content,
      tool_calls: assistant.tool_calls,
      final: second.choices[0].message.content,
      final_finish_reason: second.choices[0].finish_reason,
    };
  },

  async tools_stream(client, config) {
    const named = { type: 'function', function: { name: config.tool.function.name } };
    const stream = client.chat.completions.stream({
      model: config.model,
      messages: QUESTION,
      tools: [config.tool],
      tool_choice: named,
      stream_options: { include_usage: true },
    });
    const deltas = [];
    for await (const chunk of stream) {
      for (const choice of chunk.choices) deltas.push(...(choice.delta.tool_calls ?? []));
    }
    // The SDK assembles the call from the deltas, and fails on ones that do not fit together.
    const first = await stream.finalChatCompletion();
    const assistant = first.choices[0].message;
    const answer = client.chat.completions.stream({
      model: config.model,
      messages: withToolResult(QUESTION, assistant, config),
      tools: [config.tool],
    });
    const final = await answer.finalChatCompletion();
    return {
      finish_reason: first.choices[0].finish_reason,
      tool_calls: assistant.tool_calls.map(({ id, type, function: fn }) => ({
        id,
        type,
        function: { name: fn.name, arguments: fn.arguments },
      })),
      deltas,
      usage: first.usage ?? null,
      final: final.choices[0].message.content,
      final_finish_reason: final.choices[0].finish_reason,
    };
  },

  // The SDK's own loop: call, run the function, send its result, until a plain answer.
  async tools_runner(client, config) {
    const calls = [];
    const runner = client.chat.completions.runTools({
      model: config.model,
      messages: QUESTION,
      stream: true,
      tools: [
        {
          type: 'function',
          function: {
            ...config.tool.function,
            parse: JSON.parse,
            function: (args) => {
              calls.push(args);
              return config.toolOutput;
            },
          },
        },
      ],
    });
    const final = await runner.finalContent();
    return {
      calls,
      final,
      roles: runner.messages.map((m) => m.role),
    };
  },

  async json_schema(client, config) {
    const schema = await client.chat.completions.create({
      model: config.model,
      messages: [{ role: 'user', content: 'Report the weather.' }],
      response_format: {
        type: 'json_schema',
        json_schema: { name: 'weather_report', schema: config.schema, strict: true },
      },
    });
    const object = await client.chat.completions.create({
      model: config.model,
      messages: [{ role: 'user', content: 'Answer in JSON.' }],
      response_format: { type: 'json_object' },
    });
    return {
      content: schema.choices[0].message.content,
      finish_reason: schema.choices[0].finish_reason,
      json_object: object.choices[0].message.content,
    };
  },
};

async function readConfig() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const name = process.argv[2];
if (!(name in scenarios)) {
  console.error(`unknown scenario ${name}; one of: ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
const config = await readConfig();
const client = new OpenAI({ baseURL: config.baseURL, apiKey: config.apiKey, maxRetries: 0 });
try {
  const result = JSON.stringify(await scenarios[name](client, config)) + '\n';
  // Exit once written, not when the SDK's idle keep-alive sockets close (a third of a second).
  process.stdout.write(result, () => process.exit(0));
} catch (error) {
  console.error(`${name} failed: ${JSON.stringify(describeError(error))}\n${error.stack}`);
  process.exit(1);
}
