"""Tasks: prompts, a verifier, and a base model. A task does not know how it is trained."""
