// Package s3 is the objstore.Store on an S3-compatible service (AWS S3,
// Ceph RGW, MinIO, versitygw). It is the only package that imports the AWS
// SDK. It speaks to self-hosted servers: a custom endpoint, path-style
// addressing, any region. A PUT's body is not hashed into its signature
// (UNSIGNED-PAYLOAD) but carries a CRC32C the server verifies; other
// request/response checksums only where the protocol requires them. Over
// plain http neither direction is protected against tampering (responses
// never are), only against corruption. Network errors, throttling and 5xx answers are
// retried by the SDK's standard retryer with exponential backoff, at most
// Config.MaxAttempts times; 404 and 412 map to objstore.ErrNotFound and
// objstore.ErrPreconditionFailed.
package s3

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"vdisk/internal/storage/objstore"
)

// Defaults for Config.
const (
	// DefaultMaxAttempts bounds the attempts of one request (the first
	// plus retries).
	DefaultMaxAttempts = 5
	// DefaultMaxBackoff bounds the delay between two attempts.
	DefaultMaxBackoff = 2 * time.Second
	// DefaultRegion is used when neither Config nor the AWS configuration
	// names one; self-hosted servers mostly ignore it.
	DefaultRegion = "us-east-1"
	// maxConnsPerHost bounds idle connections kept to the endpoint: more
	// than the chunked store's parallel uploads and reads.
	maxConnsPerHost = 64
)

// castagnoli is the CRC32C table of the x-amz-checksum-crc32c header.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Config says where the bucket is and how to reach it.
type Config struct {
	// Bucket is the bucket's name. Required.
	Bucket string
	// Endpoint is the service's URL (http://127.0.0.1:7070); empty means
	// AWS (or AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 from the environment).
	Endpoint string
	// Region; empty means the AWS configuration's region, else DefaultRegion.
	Region string
	// PathStyle addresses the bucket as endpoint/bucket/key instead of
	// bucket.endpoint/key. Most self-hosted servers need it.
	PathStyle bool
	// Profile names the profile of the shared AWS config and credentials
	// files (~/.aws/config, ~/.aws/credentials) to take the credentials
	// and region from; empty means $AWS_PROFILE, else "default".
	Profile string
	// AccessKey and SecretKey, when set, are used instead of the standard
	// credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, shared
	// config and credentials files, ...).
	AccessKey, SecretKey string
	// MaxAttempts bounds the attempts per request; 0 means
	// DefaultMaxAttempts.
	MaxAttempts int
	// MaxBackoff bounds the delay between attempts; 0 means
	// DefaultMaxBackoff.
	MaxBackoff time.Duration
	// OnRetry, when set, is called each time a request is retried
	// (metrics); from many goroutines at once.
	OnRetry func()
}

// Validate checks the config and fills defaults.
func (c *Config) Validate() error {
	if err := validBucket(c.Bucket); err != nil {
		return err
	}
	if (c.AccessKey == "") != (c.SecretKey == "") {
		return fmt.Errorf("s3: %w", ErrPartialCredentials)
	}
	if c.MaxAttempts < 0 || c.MaxBackoff < 0 {
		return fmt.Errorf("s3: negative MaxAttempts %d or MaxBackoff %v", c.MaxAttempts, c.MaxBackoff)
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	return nil
}

// Store is an objstore.Store on one bucket. It is safe for concurrent use.
type Store struct {
	client *s3.Client
	bucket string
}

var _ objstore.Store = (*Store)(nil)

// New builds a Store from cfg and the standard AWS configuration sources.
// It makes no request.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
		config.WithRetryer(func() aws.Retryer {
			std := retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = cfg.MaxBackoff
				o.Backoff = retry.NewExponentialJitterBackoff(cfg.MaxBackoff)
				// No client-side retry quota: during an outage every
				// request gets its full MaxAttempts.
				o.RateLimiter = ratelimit.None
			})
			if cfg.OnRetry == nil {
				return std
			}
			return countedRetryer{RetryerV2: std, onRetry: cfg.OnRetry}
		}),
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConns = maxConnsPerHost
			tr.MaxIdleConnsPerHost = maxConnsPerHost
		})),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load aws configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = DefaultRegion
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
	})
	return &Store{client: client, bucket: cfg.Bucket}, nil
}

// Bucket returns the bucket's name.
func (s *Store) Bucket() string { return s.bucket }

// CreateBucket creates the bucket; a bucket that already exists and is
// ours is not an error.
func (s *Store) CreateBucket(ctx context.Context) error {
	_, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &s.bucket})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return fmt.Errorf("s3: create bucket %s: %w", s.bucket, mapErr(err))
	}
	return nil
}

// Get implements objstore.Store.
func (s *Store) Get(ctx context.Context, key string, off, n int64) ([]byte, objstore.Info, error) {
	return s.get(ctx, key, off, n, nil)
}

// GetInto implements objstore.GetIntoer: Get into p, sparing the
// allocation (and zeroing) of a buffer per request.
func (s *Store) GetInto(ctx context.Context, key string, off int64, p []byte) (int, objstore.Info, error) {
	b, in, err := s.get(ctx, key, off, int64(len(p)), p)
	return len(b), in, err
}

// get is Get, reading into dst (of n bytes) when it is not nil.
func (s *Store) get(ctx context.Context, key string, off, n int64, dst []byte) ([]byte, objstore.Info, error) {
	if off < 0 {
		return nil, objstore.Info{}, fmt.Errorf("s3: get %s: negative offset %d", key, off)
	}
	if n == 0 {
		in, err := s.Head(ctx, key)
		return []byte{}, in, err
	}
	in := &s3.GetObjectInput{Bucket: &s.bucket, Key: &key}
	ranged := off > 0 || n > 0
	if ranged {
		r := fmt.Sprintf("bytes=%d-", off)
		if n > 0 {
			r += strconv.FormatInt(off+n-1, 10)
		}
		in.Range = &r
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		if isStatus(err, http.StatusRequestedRangeNotSatisfiable) {
			// The range starts at or after the end of the object.
			info, herr := s.Head(ctx, key)
			return []byte{}, info, herr
		}
		return nil, objstore.Info{}, fmt.Errorf("s3: get %s: %w", key, mapErr(err))
	}
	defer out.Body.Close()
	length := aws.ToInt64(out.ContentLength)
	size := length
	if ranged && out.ContentRange != nil {
		total, err := parseContentRangeTotal(*out.ContentRange)
		if err != nil {
			return nil, objstore.Info{}, fmt.Errorf("s3: get %s: %w", key, err)
		}
		size = total
	}
	if length < 0 || (n > 0 && length > n) {
		return nil, objstore.Info{}, fmt.Errorf("s3: get %s: server sent %d bytes for a range of %d", key, length, n)
	}
	var buf []byte
	if dst != nil {
		buf = dst[:length]
	} else {
		buf = make([]byte, length)
	}
	if _, err := io.ReadFull(out.Body, buf); err != nil {
		return nil, objstore.Info{}, fmt.Errorf("s3: get %s: read body: %w", key, err)
	}
	return buf, objstore.Info{Key: key, Size: size, ETag: aws.ToString(out.ETag), ModTime: aws.ToTime(out.LastModified)}, nil
}

// parseContentRangeTotal returns the total size from "bytes a-b/total".
func parseContentRangeTotal(cr string) (int64, error) {
	i := strings.LastIndexByte(cr, '/')
	if i < 0 || !strings.HasPrefix(cr, "bytes ") {
		return 0, fmt.Errorf("malformed Content-Range %q", cr)
	}
	total, err := strconv.ParseInt(cr[i+1:], 10, 64)
	if err != nil || total < 0 {
		return 0, fmt.Errorf("malformed Content-Range %q", cr)
	}
	return total, nil
}

// Put implements objstore.Store.
func (s *Store) Put(ctx context.Context, key string, data []byte, opts objstore.PutOptions) (objstore.Info, error) {
	if opts.IfNoneMatch && opts.IfMatch != "" {
		return objstore.Info{}, fmt.Errorf("s3: put %s: %w", key, objstore.ErrInvalidOptions)
	}
	in := &s3.PutObjectInput{
		Bucket:        &s.bucket,
		Key:           &key,
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
		// The server checks the body against this CRC32C (cheap on both
		// sides) instead of a SHA-256 of the payload in the signature
		// (UNSIGNED-PAYLOAD below): two SHA-256 passes over every byte
		// were most of the client's and a sixth of versitygw's CPU. The
		// signature still covers the headers, this checksum included.
		ChecksumCRC32C: aws.String(crc32cBase64(data)),
	}
	if opts.IfNoneMatch {
		in.IfNoneMatch = aws.String("*")
	}
	if opts.IfMatch != "" {
		// Unquoted: Ceph RGW 16 compares the header's bytes with its
		// stored, unquoted ETag (a quoted one never matches); versitygw
		// takes both.
		in.IfMatch = aws.String(strings.Trim(opts.IfMatch, `"`))
	}
	out, err := s.client.PutObject(ctx, in, s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware))
	if err != nil {
		err = mapErr(err)
		// RGW answers 412, not 404, to an IfMatch put on a missing object.
		if opts.IfMatch != "" && errors.Is(err, objstore.ErrPreconditionFailed) {
			if _, herr := s.Head(ctx, key); errors.Is(herr, objstore.ErrNotFound) {
				err = herr
			}
		}
		return objstore.Info{}, fmt.Errorf("s3: put %s: %w", key, err)
	}
	return objstore.Info{Key: key, Size: int64(len(data)), ETag: aws.ToString(out.ETag), ModTime: time.Now()}, nil
}

// crc32cBase64 is the value of an x-amz-checksum-crc32c header for data.
func crc32cBase64(data []byte) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], crc32.Checksum(data, castagnoli))
	return base64.StdEncoding.EncodeToString(b[:])
}

// Delete implements objstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil && !errors.Is(mapErr(err), objstore.ErrNotFound) {
		return fmt.Errorf("s3: delete %s: %w", key, mapErr(err))
	}
	return nil
}

// List implements objstore.Store.
func (s *Store) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("s3: list %s: %w", prefix, mapErr(err))
		}
		for _, o := range page.Contents {
			in := objstore.Info{Key: aws.ToString(o.Key), Size: aws.ToInt64(o.Size), ETag: aws.ToString(o.ETag), ModTime: aws.ToTime(o.LastModified)}
			if err := fn(in); err != nil {
				return err
			}
		}
	}
	return nil
}

// Head implements objstore.Store.
func (s *Store) Head(ctx context.Context, key string) (objstore.Info, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return objstore.Info{}, fmt.Errorf("s3: head %s: %w", key, mapErr(err))
	}
	return objstore.Info{Key: key, Size: aws.ToInt64(out.ContentLength), ETag: aws.ToString(out.ETag), ModTime: aws.ToTime(out.LastModified)}, nil
}

// countedRetryer tells onRetry of every retry: the SDK asks RetryDelay
// once before each attempt after the first.
type countedRetryer struct {
	aws.RetryerV2
	onRetry func()
}

func (r countedRetryer) RetryDelay(attempt int, err error) (time.Duration, error) {
	r.onRetry()
	return r.RetryerV2.RetryDelay(attempt, err)
}
