"""The loss-mask view: a tokenized sample as HTML, trained tokens highlighted (notebook 01)."""

from __future__ import annotations

import html

from fmlab.data.chat_template import trained_mask


def loss_mask_html(tokenizer, ids: list[int], labels: list[int]) -> str:
    """The sample as HTML, one span per token; trained tokens on green, special pieces in grey."""
    trained = trained_mask(list(labels))
    special = {tokenizer.eos_id, tokenizer.pad_id, tokenizer.turn_start_id, tokenizer.turn_end_id}
    spans = []
    for token, target in zip(ids, trained):
        piece = tokenizer.piece(token)
        if token == tokenizer.newline_id:
            text = "↵<br>"
        else:
            text = html.escape(piece.replace("\u2581", " "))
        style = "box-shadow:inset -1px 0 #ccc;"  # a faint edge shows where tokens split
        style += "background:#b7ebb7;" if target else ""
        if token in special:
            style += "color:#888;"
        spans.append(f'<span style="{style}" title="{token}">{text}</span>')
    count = sum(trained)
    legend = (
        f'<div style="margin-bottom:4px">{len(ids)} tokens, {count} trained '
        f'(<span style="background:#b7ebb7">green</span>)</div>'
    )
    body = "".join(spans)
    return f'{legend}<div style="font-family:monospace;white-space:pre-wrap;line-height:1.6">{body}</div>'
