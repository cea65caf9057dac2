"""``rlhfkit serve``: a model behind an OpenAI-compatible HTTP API.

    engine.py           what every engine shares: a request, the chunks it streams back, the
                        protocol, the text release, chat rendering and context checks
    hf_engine.py        transformers: waiting requests decoded together in one ``generate``
    llama_engine.py     llama.cpp (llama-cpp-python) on a GGUF file, one request at a time
    api.py              the OpenAI request bodies (pydantic) and the replies built from chunks
    app.py              the FastAPI app: routes, API key, OpenAI-style errors, SSE streaming

Only ``app.py`` imports the web packages (the ``serve`` extra); the rest runs without them.
"""
