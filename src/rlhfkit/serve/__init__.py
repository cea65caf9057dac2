"""``rlhfkit serve``: a model behind an OpenAI-compatible HTTP API.

    engine.py           what every engine shares: a request, the chunks it streams back, the
                        protocol, prompt encoding and chat rendering, context checks, and the
                        stop-string / UTF-8 holding of text
    batching.py         what batching engines share: the worker that batches waiting requests,
                        each row's sampling, log-probs and ending
    hf_engine.py        transformers: waiting requests decoded together in one ``generate``
    onnx_engine.py      onnxruntime on an ONNX export, the batch decoded step by step with its
                        KV cache
    llama_engine.py     llama.cpp (llama-cpp-python) on a GGUF file, one request at a time
    vllm_engine.py      vLLM's async engine: continuous batching, on an event loop of its own
    api.py              the OpenAI request bodies (pydantic) and the replies built from chunks
    app.py              the FastAPI app: routes, API key, OpenAI-style errors, SSE streaming

Only ``app.py`` imports the web packages (the ``serve`` extra); the rest runs without them.
"""
