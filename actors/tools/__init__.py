"""Tools the LLM may call during a reply: what a tool is (`base`), the set a session may use and how a
call is run (`toolbox`)."""
