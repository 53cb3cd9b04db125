-- Protobuf encoding of the msg_ids of DELIVERED receipt bodies, so that the
-- writer's batch statement (`store::pg_batch`) can store the receipt
-- messages its acknowledgements produce in the same statement, and so in
-- the same (implicit) transaction. The rest of a body (kind, reader,
-- device) is encoded by the writer and bound. `store::pg_batch` tests the
-- bytes against prost's.

-- Field `tag` (a length-delimited field number << 3 | 2) holding `vals`
-- packed: the tag, the payload's length and each value as a base-128
-- varint of its 64-bit two's complement (as protobuf encodes int64);
-- nothing for an empty array. PL/pgSQL keeps its plans for the session,
-- where an SQL function would be planned again by every statement that
-- calls it.
CREATE FUNCTION im_packed_int64s(tag INT, vals BIGINT[]) RETURNS BYTEA
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    payload BYTEA := '\x'::BYTEA;
    head BYTEA;
    v BIGINT;
    n BIGINT;
BEGIN
    IF cardinality(vals) = 0 THEN
        RETURN '\x'::BYTEA;
    END IF;
    FOREACH v IN ARRAY vals LOOP
        WHILE v < 0 OR v >= 128 LOOP
            payload := payload || set_byte('\x00'::BYTEA, 0, ((v & 127) | 128)::INT);
            -- A logical shift: clear the seven bits the arithmetic shift
            -- copied from the sign (2^57 - 1).
            v := (v >> 7) & 144115188075855871;
        END LOOP;
        payload := payload || set_byte('\x00'::BYTEA, 0, v::INT);
    END LOOP;
    head := set_byte('\x00'::BYTEA, 0, tag);
    n := length(payload);
    WHILE n >= 128 LOOP
        head := head || set_byte('\x00'::BYTEA, 0, ((n & 127) | 128)::INT);
        n := n >> 7;
    END LOOP;
    RETURN head || set_byte('\x00'::BYTEA, 0, n::INT) || payload;
END $$;
