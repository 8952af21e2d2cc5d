# Sourced by the bench scripts.
# write_section NAME SECTION OUT: puts the Markdown in SECTION between the
# "<!-- bench/NAME: begin -->" and "end" markers of OUT (appends it where OUT has none).
write_section() {
  local name=$1 section=$2 out=$3
  if [ -f "$out" ] && grep -q "<!-- bench/$name: begin -->" "$out"; then
    awk -v section="$section" -v begin="<!-- bench/$name: begin -->" -v end="<!-- bench/$name: end -->" '
      $0 == begin { while ((getline line < section) > 0) print line; skip = 1; next }
      $0 == end { skip = 0; next }
      !skip { print }' "$out" >"$out.tmp"
    mv "$out.tmp" "$out"
  else
    cat "$section" >>"$out"
  fi
}
