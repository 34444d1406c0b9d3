-- Contact search by a national number, typed without its country code ("07700 900123" for the
-- kept +447700900123; service/reporting/contact_search.py, national_endings): its digits are
-- matched as the end of the kept phone numbers. The end of a number is the start of its
-- reverse, so a btree of reverse(value) finds them as a range, whatever the directory's size;
-- text_pattern_ops compares bytewise, which makes the range of a reversed ending exact (and
-- lets the search use it in a cached plan, where a LIKE pattern's prefix is unknown).
CREATE INDEX customer_identities_phone_reversed ON customer_identities
    (reverse(value) text_pattern_ops) WHERE kind = 'phone';
