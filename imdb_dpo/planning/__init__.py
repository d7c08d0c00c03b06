"""Cost planning: the memory, time and disk estimates the stages check before loading a model, and the plan of a
whole preset made from them."""
