"""The demo, a product feature (README.md, "The demo").

- `command`: `gateway demo`, the whole product in one offline process.
- `upstream`: a fake model server speaking the OpenAI and Anthropic APIs.
"""
