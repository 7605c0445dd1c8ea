"""Method plugins, one module per method. Each registers itself with `@register_method`."""
