"""{% line_chart %} and {% bar_chart %}: the SVG charts of `annotation.charts` in templates."""

from django import template

from .. import charts

register = template.Library()
register.simple_tag(charts.line_chart, name="line_chart")
register.simple_tag(charts.bar_chart, name="bar_chart")
