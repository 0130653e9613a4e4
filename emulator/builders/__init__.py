"""Image builders: each turns a recipe (data in `images/NAME/recipe.toml`) into files plus a guest spec.

A builder module exposes `inputs(recipe) -> dict` (everything outside the recipe folder that the
result depends on, such as resolved package versions; it feeds the cache key) and
`build(recipe, out_dir, log) -> dict` (writes files into `out_dir`, returns `GuestSpec` fields with
paths relative to `out_dir`). `emulator.images` does the caching around them.
"""
